"""The dependency floor: the lowest versions that pyproject.toml allows.

    python .ci/floor.py           # pip constraints, one `name==version` a line
    python .ci/floor.py --check   # exit 1 unless the installed versions are those

pyproject.toml is the one place the floor is written: every runtime
dependency must read `name>=version`, and `.ci/run` installs exactly these
versions in a venv of their own and runs the fast tests there (as optax's CI
keeps its oldest JAX in sync with its pyproject.toml).
"""

import importlib.metadata
import pathlib
import re
import sys

import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"


def floor() -> dict[str, str]:
    """{distribution name: lowest version}, from pyproject's dependencies."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(
            r"([A-Za-z0-9._-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement
        )
        if match is None:
            sys.exit(
                f"{PYPROJECT}: dependency {requirement!r} must read `name>=version`, "
                "so that CI can test its lowest version."
            )
        pins[match[1]] = match[2]
    return pins


def _same(a: str, b: str) -> bool:
    """Whether two release versions are equal (2.0 is 2.0.0)."""
    return re.sub(r"(\.0)+$", "", a) == re.sub(r"(\.0)+$", "", b)


def main() -> int:
    pins = floor()
    if sys.argv[1:] == ["--check"]:
        wrong = {
            name: importlib.metadata.version(name)
            for name, version in pins.items()
            if not _same(importlib.metadata.version(name), version)
        }
        for name, installed in wrong.items():
            print(f"{name}: {installed} installed, floor {pins[name]}", file=sys.stderr)
        if not wrong:
            print("floor installed: " + ", ".join(f"{n}=={v}" for n, v in pins.items()))
        return 1 if wrong else 0
    if sys.argv[1:]:
        sys.exit(__doc__)
    for name, version in pins.items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
