"""The documentation site builds with `--strict` (a broken link or a missing page fails it) and, once
built, loads nothing from another host: no script, stylesheet, font or image from a CDN."""

import re
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import yaml

from tests.server import REPO

# Attributes through which a page makes the browser fetch something (links to read are fine).
LOADS = {("script", "src"), ("img", "src"), ("iframe", "src"), ("source", "src"), ("video", "src")}
LOADS |= {("audio", "src"), ("embed", "src"), ("object", "data"), ("input", "src")}
LINK_LOADS = {"stylesheet", "icon", "preload", "prefetch", "preconnect", "dns-prefetch", "modulepreload"}
EXTERNAL = re.compile(r"^(https?:)?//", re.IGNORECASE)


class Loads(HTMLParser):
    """Everything an HTML page asks the browser to fetch, and whether it holds a Mermaid diagram
    (the theme would fetch Mermaid's script from a CDN to draw one)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.mermaid = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.urls += [values[attr] for t, attr in LOADS if t == tag and attr in values]
        if tag == "link" and LINK_LOADS & set(values.get("rel", "").split()):
            self.urls.append(values.get("href", ""))
        if tag == "img" and "srcset" in values:
            self.urls += [part.split()[0] for part in values["srcset"].split(",") if part.strip()]
        self.mermaid |= "mermaid" in values.get("class", "").split()


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )


def test_the_site_builds_strictly_and_loads_nothing_from_another_host(tmp_path: Path) -> None:
    built = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "#"))
    assert config["theme"]["font"] is False, "the theme's web fonts come from Google's CDN"
    assert "repo_url" not in config, "the theme asks GitHub's API for a repository's stars"
    pages = list((tmp_path / "site").rglob("*.html"))
    assert len(pages) > 25
    for page in pages:
        html = page.read_text()
        # An include that did not happen shows as its syntax; a generated section, as its HTML comment.
        where = page.relative_to(tmp_path / "site")
        text = unescape(re.sub(r"<[^>]+>", "", html))  # as a reader sees it, highlighting and all
        assert not re.search(r"--8\s*<\s*--", text), f"{where} shows an include that did not happen"
        assert "<!-- generated" not in html, f"{where} holds a generated section that did not happen"
        loads = Loads()
        loads.feed(html)
        external = [url for url in loads.urls if EXTERNAL.match(url)]
        assert not external, f"{where} loads {external}"
        assert not loads.mermaid, f"{where} holds a Mermaid diagram, drawn by a script from a CDN"
    for sheet in (tmp_path / "site").rglob("*.css"):
        imported = re.findall(r"(?:url\(|@import)\s*['\"]?((?:https?:)?//[^'\")]+)", sheet.read_text())
        assert not imported, f"{sheet.name} loads {imported}"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(REPO / "docs"), str(docs)], check=True)
    page = docs / "guides" / "page.md"
    page.write_text(page.read_text() + "\nSee [the missing page](../nowhere.md).\n")
    config = (REPO / "mkdocs.yml").read_text()
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("scripts/mkdocs_hooks.py", str(REPO / "scripts" / "mkdocs_hooks.py"))
    config = config.replace("base_path: [docs/examples, .]", f"base_path: [{docs / 'examples'}, {REPO}]")
    (tmp_path / "mkdocs.yml").write_text(config)
    built = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "nowhere.md" in built.stdout + built.stderr
