"""requirements.lock (scripts/lock.py): every package pinned once, Razor itself left out, and every dependency
range of pyproject.toml (core and extras) met by its pin, so that setup.sh's constrained install resolves."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.lock import LOCK_FILE, frozen, lock_text, read_pins

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, version = line.split("==")
        assert canonicalize_name(name) not in pins, f"{name} pinned twice"
        pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_every_dependency_within_its_range():
    pins = _pins(read_pins(LOCK_FILE))
    assert "razor" not in pins and {"torch", "numpy", "pip"} <= set(pins)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for req in requirements:
        if canonicalize_name(req.name) == "razor":
            continue
        assert canonicalize_name(req.name) in pins, f"{req.name} is not in {LOCK_FILE.name}: run python -m scripts.lock"
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), (req, pins[req.name])


def test_generated_lock_is_this_environment_without_the_editable_razor():
    text = lock_text(frozen())
    pins = _pins([line for line in text.splitlines() if not line.startswith("#")])
    import numpy
    import torch

    assert pins["numpy"] == numpy.__version__ and pins["torch"] == torch.__version__.split("+")[0]
    assert "razor" not in pins
