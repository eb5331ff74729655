"""The dependency floors of pyproject.toml are the versions `make test-min` installs and tests.

A floor nobody installed is a guess; this keeps ``ci/min-versions.txt`` (what `make test-min`
pins) and the lower bounds of ``pyproject.toml`` the same, so raising one without the other fails.
"""

from __future__ import annotations

import re
import tomllib

from helpers.paths import REPO


def _floors_in_pyproject() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", dep)
        assert match, f"{dep!r} has no lower bound: every dependency needs a tested floor"
        floors[match.group(1).lower()] = match.group(2)
    return floors


def _pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "ci" / "min-versions.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_every_floor_is_the_pinned_tested_version() -> None:
    assert _floors_in_pyproject() == _pinned()


def test_python_floor_is_the_tested_python() -> None:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"  # the only Python with a CPU build of torch on the machines that test it
