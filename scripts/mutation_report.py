"""The mutation score of `make mutation`, from the results mutmut left in mutants/.

A mutant is killed when a test failed on it, or hung until mutmut's timeout (the tests noticed);
it survived when every test passed, or when no test runs its function at all. Mutants that are
equivalent to the original (no input can tell them apart) are listed, each with why, under
"Equivalent mutants" in the README: they are left out of the score. Exits non-zero below the goal.
"""

import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.90
KILLED = {1, 3}  # a test failed (3: pytest's internal error, also a failure)
TIMEOUT = {24, -24, 36, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
EQUIVALENT_HEADING = "### Equivalent mutants"


def equivalent_mutants(readme: str) -> set[str]:
    """The mutant names under the README's heading, up to the next heading."""
    section = readme.partition(EQUIVALENT_HEADING)[2].split("\n#", 1)[0]
    return set(re.findall(r"`([\w.]+__mutmut_\d+)`", section))


def main() -> int:
    results: dict[str, dict[str, int | None]] = {}
    for meta in sorted((REPO / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(REPO / "mutants")).removesuffix(".meta")
        results[source] = json.loads(meta.read_text())["exit_code_by_key"]
    if not results:
        print("no mutation results: run `make mutation`")
        return 2
    equivalent = equivalent_mutants((REPO / "README.md").read_text())
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
            elif code in KILLED:
                kind = "killed"
            elif code in TIMEOUT:
                kind = "timeout"
            elif code in SURVIVED:
                kind = "survived"
            elif code in NO_TESTS:
                kind = "no test"
            else:
                kind = "unchecked"  # not run (interrupted), or suspicious: run it again
            counts[kind] += 1
            if kind in ("survived", "no test", "unchecked"):
                survivors.append((name, kind))
        totals.update(counts)
        print(
            f"{source:<24}{sum(counts.values()):>8}{counts['killed']:>8}{counts['timeout']:>8}"
            f"{counts['survived']:>9}{counts['no test']:>8}{counts['equivalent']:>7}"
        )
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
