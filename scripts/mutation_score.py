"""Print the result of `make mutants`: the survivors by module, then the kill ratio as
the last line.

Reads mutmut's per-module results (mutants/<module>.py.meta, an exit code per mutant)
for the modules [tool.mutmut] covers. A mutant counts as killed when a test failed under
it or it ran past its time limit (a mutant that loops forever is caught, as mutmut
counts it too); every other outcome (survived, no tests, suspicious) counts against the
ratio. `--fail-under PERCENT` exits 1 below that ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parents[1]
KILLED = {"killed", "timeout"}


def covered_modules(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    config = tomllib.loads(pyproject.read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def results(module: str) -> dict[str, str]:
    """mutant name -> status, for one module's last run."""
    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.is_file():
        sys.exit(f"no results for {module}: run `make mutants`")
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in exit_codes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fail-under", type=float, default=0.0, metavar="PERCENT")
    args = parser.parse_args()
    killed = total = 0
    for module in covered_modules():
        statuses = results(module)
        counts = Counter(statuses.values())
        module_killed = sum(counts[s] for s in KILLED)
        killed += module_killed
        total += len(statuses)
        print(f"{module}: {module_killed}/{len(statuses)} killed")
        for name, status in sorted(statuses.items()):
            if status not in KILLED:
                print(f"    {status}: {name}")
    if total == 0:
        sys.exit("no mutants: run `make mutants`")
    ratio = 100 * killed / total
    print(f"kill ratio: {ratio:.1f}% ({killed}/{total})")
    if ratio < args.fail_under:
        sys.exit(1)


if __name__ == "__main__":
    main()
