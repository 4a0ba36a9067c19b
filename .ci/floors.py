"""Print the declared minimum of every runtime dependency in pyproject.toml as ``name==version``.

Runtime dependencies and the optional extras users install for a feature (``text``); not ``gpu``
(no GPU here) nor ``dev``.

``make floors`` installs exactly these into a throwaway venv and runs a quick subset of the tests, so a
floor in pyproject.toml is a version that was run, not a guess. Reads the file, so the check cannot drift
from what users are promised.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

CHECKED_EXTRAS = ("text",)
FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?$")


def floors(pyproject: Path) -> list[str]:
    """``name==floor`` for each dependency; an entry without a ``>=`` floor is an error (no floor, no check)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    dependencies = project["dependencies"] + [d for extra in CHECKED_EXTRAS
                                              for d in project["optional-dependencies"][extra]]
    pins = []
    for entry in dependencies:
        match = FLOOR.match(entry)
        if match is None:
            raise SystemExit(f".ci/floors.py: dependency {entry!r} has no '>=' floor to check")
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print(" ".join(floors(root / "pyproject.toml")))
    sys.exit(0)
