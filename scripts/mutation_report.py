"""The mutation score of `make mutation`, from the results mutmut left in mutants/.

A mutant is killed when a test failed on it, or hung until mutmut's timeout (the tests noticed);
it survived when every test passed, or when no test runs its function at all. Mutants that are
equivalent to the original (no input can tell them apart) are listed, each with why, under
"Equivalent mutants" in the mutation report (docs/reports/mutation.md): they are left out of the
score, and named when a test kills one or none has the name (mutmut numbers a function's mutants
in order: editing the function renames them). Exits non-zero below the goal. `--forget-survivors`
(`make mutation` runs it first) has survivors checked again: mutmut keeps a result until the
mutated function itself changes.
"""

import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.90
KILLED = {1, 3, 37}  # a test failed (3: pytest's internal error), or the type check did (37)
TIMEOUT = {24, -24, 36, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
REPORT = REPO / "docs" / "reports" / "mutation.md"
EQUIVALENT_HEADING = "## Equivalent mutants"


def equivalent_mutants(report: str) -> set[str]:
    """The mutant names under the report's heading, up to the next heading."""
    section = report.partition(EQUIVALENT_HEADING)[2].split("\n#", 1)[0]
    return set(re.findall(r"`([\w.]+__mutmut_\d+)`", section))


def forget_survivors() -> None:
    """Survivors, and mutants no test reached, are run again by the next `mutmut run`."""
    for meta in (REPO / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        for name, code in codes.items():
            if code in SURVIVED | NO_TESTS:
                codes[name] = None
        meta.write_text(json.dumps(data))


def main() -> int:
    if sys.argv[1:] == ["--forget-survivors"]:
        forget_survivors()
        return 0
    results: dict[str, dict[str, int | None]] = {}
    for meta in sorted((REPO / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(REPO / "mutants")).removesuffix(".meta")
        results[source] = json.loads(meta.read_text())["exit_code_by_key"]
    if not results:
        print("no mutation results: run `make mutation`")
        return 2
    equivalent = equivalent_mutants(REPORT.read_text())
    survivors: list[tuple[str, str]] = []
    totals: Counter[str] = Counter()
    print(
        f"{'module':<24}{'mutants':>8}{'killed':>8}{'timeout':>8}{'survived':>9}{'no test':>8}{'equiv.':>7}"
    )
    for source, by_name in results.items():
        counts: Counter[str] = Counter()
        for name, code in by_name.items():
            if name in equivalent:
                kind = "equivalent"
                if code in KILLED | TIMEOUT:
                    print(f"listed as equivalent, yet killed: {name} (take it off the report's list)")
            elif code in KILLED:
                kind = "killed"
            elif code in TIMEOUT:
                kind = "timeout"
            elif code in SURVIVED:
                kind = "survived"
            elif code in NO_TESTS:
                kind = "no test"
            elif code is None:
                kind = "unchecked"  # not run yet (an interrupted run)
            else:
                kind = f"exit code {code}"  # suspicious, a crash, skipped: look at it
            counts[kind] += 1
            if kind not in ("killed", "timeout", "equivalent"):
                survivors.append((name, kind))
        totals.update(counts)
        print(
            f"{source:<24}{sum(counts.values()):>8}{counts['killed']:>8}{counts['timeout']:>8}"
            f"{counts['survived']:>9}{counts['no test']:>8}{counts['equivalent']:>7}"
        )
    for name in sorted(equivalent - {name for by_name in results.values() for name in by_name}):
        print(f"listed as equivalent, but no mutant has that name now: {name}")
    judged = sum(totals.values()) - totals["equivalent"]
    caught = totals["killed"] + totals["timeout"]
    score = caught / judged if judged else 0.0
    print(f"\nscore: {caught}/{judged} non-equivalent mutants killed = {score:.1%} (goal {GOAL:.0%})")
    if totals["unchecked"]:
        checked = judged - totals["unchecked"]
        print(
            f"{totals['unchecked']} mutants were not checked (the score counts them as surviving): "
            f"of the {checked} checked, {caught / checked if checked else 0:.1%} were killed. "
            "Run `make mutation` again to finish them"
        )
    if survivors:
        print("\nsurviving mutants (`.venv/bin/mutmut show NAME` prints the change):")
        for name, kind in survivors:
            print(f"  {name}" + ("" if kind == "survived" else f"  ({kind})"))
    return 0 if score >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
