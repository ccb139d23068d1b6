"""The reference pages that would rot if written by hand, generated from the code at build time.

A page says `<!-- generated: NAME -->` on a line of its own and MkDocs (`hooks:` in mkdocs.yml) puts
the table in its place: every setting from `Settings`, the training CLI's flags from its parser,
the HTTP API from the OpenAPI schema, the metrics from their registry, and the modules from their
docstrings. A name this file does not know fails the build."""

import argparse
import ast
import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
# Anything that looks like a marker: one MARKER does not take is a typo that would vanish silently.
LOOSE_MARKER = re.compile(r"^[ \t]*<!--\s*generated\b.*$", re.IGNORECASE | re.MULTILINE)
# Environment variables of ours that are not settings: the launcher tells its ranks its pid.
INTERNAL_VARIABLES = {"MNIST_LAUNCHER_PID": "set by `python -m training` for the ranks it launches"}


@contextlib.contextmanager
def defaults() -> Iterator[None]:
    """The docs describe the defaults, whatever MNIST_* variables the shell building them has set."""
    ours = {name: value for name, value in os.environ.items() if name.startswith("MNIST_")}
    for name in ours:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(ours)


def cell(text: object) -> str:
    """A value fit for one table cell: no line breaks, no bare pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def setting_rows() -> list[dict[str, str]]:
    """Every setting: its variable, default, type or choices, bounds and meaning."""
    from typing import get_args

    from annotated_types import Ge, Gt, Le, Lt, MaxLen
    from pydantic_core import PydanticUndefined

    from app.config import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no description: the reference page needs one")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "shown_default" in extra:
            default = str(extra["shown_default"])
        elif field.default_factory is not None:
            raise ValueError(f"Settings.{name}'s default is computed: say it in words (shown_default)")
        elif field.default is PydanticUndefined or field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`"
        choices = get_args(field.annotation) if str(field.annotation).startswith("typing.Literal") else ()
        kind = " \\| ".join(f"`{c}`" for c in choices) if choices else _type_name(field.annotation)
        bounds = []
        for rule in field.metadata:
            for cls, attr, sign in ((Ge, "ge", ">="), (Gt, "gt", ">"), (Le, "le", "<="), (Lt, "lt", "<")):
                if isinstance(rule, cls):
                    bounds.append(f"{sign} {getattr(rule, attr)}")
            if isinstance(rule, MaxLen):
                bounds.append(f"at most {rule.max_length} characters")
        rows.append(
            {
                "variable": f"`MNIST_{name.upper()}`",
                "default": default,
                "type": kind,
                "bounds": ", ".join(bounds) or "",
                "meaning": cell(field.description),
            }
        )
    return rows


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    text = re.sub(r"<class '([a-zA-Z.]+)'>", r"\1", text)
    plain = {"int | None": "int", "str | None": "text", "Path | None": "path", "str": "text", "Path": "path"}
    return plain.get(text, text)


def settings() -> str:
    lines = ["| variable | default | type | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
    lines += [" | ".join(["", *row.values(), ""]).strip() for row in setting_rows()]
    lines += ["", "Not settings, but read from the environment by our processes:", ""]
    lines += [f"- `{name}`: {what}." for name, what in INTERNAL_VARIABLES.items()]
    return "\n".join(lines)


def training_cli() -> str:
    """The flags of `python -m training`, by group, from its own parser."""
    from training.__main__ import build_parser

    parser = build_parser()
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = "other flags" if group.title in ("options", "optional arguments") else group.title
        out += [f"**{cell(title)}**", "", "| flag | default | meaning |", "| --- | --- | --- |"]
        for action in actions:
            if not action.help:
                raise ValueError(f"{action.option_strings[0]} has no help: the reference page needs one")
            flag = ", ".join(action.option_strings)
            if action.choices:
                flag += " {" + ",".join(map(str, action.choices)) + "}"
            elif action.nargs != 0:
                flag += f" {action.metavar or action.dest.upper()}"
            shown = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"
            out.append(f"| `{cell(flag)}` | {shown} | {cell(action.help)} |")
        out.append("")
    return "\n".join(out)


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_schema_text(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_text(schema.get('items', {}))}"
    return str(kind)


def http_api() -> str:
    """Every operation of the OpenAPI schema: its parameters, body and answers."""
    from app.config import Settings
    from app.main import create_app

    with defaults():
        schema = create_app(Settings()).openapi()
    out = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            # FastAPI names an operation after its function when it has no summary: the description says more.
            what = op.get("description", op.get("summary", "")).strip()
            out += [f"### `{method.upper()} {path}`", "", what]
            params = op.get("parameters", [])
            if params:
                out += [
                    "",
                    "| parameter | in | type | default | meaning |",
                    "| --- | --- | --- | --- | --- |",
                ]
                for p in params:
                    s = p.get("schema", {})
                    required = "required" if p.get("required") else ""
                    default = f"`{s['default']}`" if "default" in s else required
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_schema_text(s)} | {default} "
                        f"| {cell(p.get('description', s.get('description', '')))} |"
                    )
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                out += ["", f"Body: `{media}`, {_schema_text(content.get('schema', {}))}."]
            out += ["", "| status | meaning |", "| --- | --- |"]
            for status, answer in op.get("responses", {}).items():
                out.append(f"| {status} | {cell(answer.get('description', ''))} |")
            out.append("")
    return "\n".join(out)


def metrics() -> str:
    """Every series `GET /metrics` exposes, from the service's own registry."""
    from prometheus_client.metrics import MetricWrapperBase

    from app.metrics import Metrics

    out = ["| metric | type | labels | what |", "| --- | --- | --- | --- |"]
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            labels = ", ".join(f"`{label}`" for label in metric._labelnames)
            out.append(f"| `{name}` | {metric._type} | {labels} | {cell(metric._documentation)} |")
    return "\n".join(out)


def modules() -> str:
    """Each package's modules with the first sentence of their docstrings."""
    out = []
    for package in ("models", "training", "app", "bench", "scripts"):
        out += [f"**`{package}/`**", "", "| module | what it is |", "| --- | --- |"]
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO)
            if "_pb2" in path.name or "versions" in relative.parts:
                continue
            doc = ast.get_docstring(ast.parse(path.read_text()))
            if not doc:
                if path.name == "__init__.py":
                    continue
                raise ValueError(f"{relative} has no docstring: the architecture page needs one")
            first = re.split(r"(?<=\.)\s", " ".join(doc.split()), maxsplit=1)[0]
            out.append(f"| `{relative}` | {cell(first)} |")
        out.append("")
    return "\n".join(out)


GENERATORS: dict[str, Callable[[], str]] = {
    "settings": settings,
    "training-cli": training_cli,
    "http-api": http_api,
    "metrics": metrics,
    "modules": modules,
}


def expand(markdown: str) -> str:
    """The page with each marker replaced by what it names."""

    def generated(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated section {name!r}: known are {sorted(GENERATORS)}")
        return GENERATORS[name]()

    markdown = markdown.replace("\r\n", "\n")
    exact = {m.group(0) for m in MARKER.finditer(markdown)}
    malformed = [m.group(0) for m in LOOSE_MARKER.finditer(markdown) if m.group(0) not in exact]
    if malformed:
        raise ValueError(
            f"ask for a generated section with '<!-- generated: name -->' alone on a line: {malformed}"
        )
    return MARKER.sub(generated, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: fill in the generated sections of a page."""
    return expand(markdown)
