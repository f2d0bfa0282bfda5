"""The package metadata tells the truth: requires-python and lower bounds are ones the
dependencies can meet, and requirements.lock (what `make install` and CI install) pins
versions inside pyproject.toml's ranges, and is what this environment runs."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = Version(version)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lower_bound(spec: SpecifierSet) -> Version | None:
    bounds = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


def _requirements() -> list[Requirement]:
    extras = PROJECT["optional-dependencies"]
    # cuda12 is the GPU variant of jax, not installed on a CPU machine
    listed = PROJECT["dependencies"] + extras["dev"] + extras["postgres"] + extras["mlflow"]
    return [Requirement(r) for r in listed]


def test_requires_python_is_what_the_dependencies_need():
    ours = _lower_bound(SpecifierSet(PROJECT["requires-python"]))
    for req in _requirements():
        theirs = md.metadata(req.name).get("Requires-Python")
        if theirs:
            need = _lower_bound(SpecifierSet(theirs))
            assert need is None or need <= ours, f"{req.name} needs Python {theirs}"
    # the core stack (jax, pandas, scipy) has no wheels below 3.11: say so, not fail later
    assert ours == Version("3.11")


def test_every_lower_bound_is_one_the_stack_accepts():
    """A declared lower bound must not be below what another dependency requires of it
    (numpy>=1.26 where jax needs numpy>=2 was one)."""
    declared = {_norm(r.name): r for r in _requirements()}
    for req in _requirements():
        for dep in md.requires(req.name) or []:
            dep = Requirement(dep)
            if dep.marker is not None or _norm(dep.name) not in declared:
                continue
            ours = _lower_bound(declared[_norm(dep.name)].specifier)
            need = _lower_bound(dep.specifier)
            if ours is not None and need is not None:
                assert ours >= need, f"{dep.name}>={ours} but {req.name} needs {dep.specifier}"


def test_the_lock_pins_versions_inside_the_ranges_and_this_environment_is_it():
    pins = _lock()
    for req in _requirements():
        name = _norm(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock"
        assert pins[name] in req.specifier, f"lock {req.name}=={pins[name]} not in {req}"
    for name, version in pins.items():
        assert Version(md.version(name)) == version, f"installed {name} is not the locked one"
