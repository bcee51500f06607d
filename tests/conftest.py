"""Shared fixtures: the real data in $SPECFUSION_DATA (default ../shared/data from the project root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Where the real test data lives."""
    return Path(os.environ.get("SPECFUSION_DATA", PROJECT_ROOT.parent / "shared" / "data")).resolve()


def require_data(*parts: str) -> Path:
    """Path under the data root, or skip the test with the reason if it is absent."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set SPECFUSION_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_data()


@pytest.fixture(scope="session")
def esc50_root() -> Path:
    return require_data("ESC-50")


@pytest.fixture(scope="session")
def formats_dir() -> Path:
    return require_data("formats")


@pytest.fixture(scope="session")
def dcase2018_root() -> Path:
    return require_data("DCASE2018-task5")


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    return require_data("FSDD")


@pytest.fixture(scope="module")
def torch_two_threads():
    """At most two torch threads for the module's tests (the CI machine has two cores), restored after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def isolated_specfusion_home(tmp_path_factory):
    """Weights and ONNX caches of the test session go to a temporary folder, not the user's cache."""
    saved = os.environ.get("SPECFUSION_HOME")
    os.environ["SPECFUSION_HOME"] = str(tmp_path_factory.mktemp("specfusion_home"))
    yield
    if saved is None:
        os.environ.pop("SPECFUSION_HOME", None)
    else:
        os.environ["SPECFUSION_HOME"] = saved
