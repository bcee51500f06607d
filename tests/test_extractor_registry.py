"""The extractor registry: the table of built-in extractors, entry points of other packages, register()."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys

import numpy as np
import pytest

from specfusion.errors import ConfigError
from specfusion.features.extractors import base
from specfusion.features.extractors.base import (
    BUILTIN_EXTRACTORS,
    ENTRY_POINT_GROUP,
    Extractor,
    available_extractors,
    describe_extractors,
    get_extractor,
    get_extractor_class,
    register,
)

BUILTIN_NAMES = {
    "aisfx",
    "birdnet",
    "densenet121",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "openl3",
    "panns_cnn14",
    "resnet50",
    "soundnet",
    "vgg16",
    "vgg19",
    "yamnet",
}


class PluginExtractor(Extractor):
    """A package's extractor: the waveform's mean and peak, times ``scale``."""

    name = "plugin_stats"
    input_kind = "waveform"
    sample_rate = 8000
    dim = 2

    def __init__(self, *, scale: float = 1.0):
        self.scale = float(scale)

    def prepare(self, waveform):
        return np.asarray(waveform, dtype=np.float32)

    def embed(self, batch):
        batch = np.asarray(batch, dtype=np.float32)
        return self.scale * np.stack([batch.mean(axis=1), np.abs(batch).max(axis=1)], axis=1)

    def config(self):
        return {"extractor": self.name, "scale": self.scale}


def plugin_class(name: str) -> type[Extractor]:
    """An entry point may name a function of the extractor name that returns the class."""
    return type("Scaled", (PluginExtractor,), {"name": name})


def entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def installed(monkeypatch):
    """``installed(*entry_points)``: pretend installed packages declare these entry points."""
    real = importlib.metadata.entry_points

    def install(*entries):
        def entry_points(**params):
            return list(entries) if params.get("group") == ENTRY_POINT_GROUP else real(**params)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    return install


def test_the_table_lists_exactly_the_builtin_extractors():
    assert set(BUILTIN_EXTRACTORS) == BUILTIN_NAMES
    assert BUILTIN_NAMES <= set(available_extractors())
    for name in BUILTIN_NAMES:
        cls = get_extractor_class(name)
        assert issubclass(cls, Extractor) and cls.name == name
        assert cls.__module__ in base.FAMILY_MODULES


def test_looking_up_names_imports_no_extractor_module_nor_torch():
    code = (
        "import sys\n"
        "from specfusion.features.extractors import available_extractors, base\n"
        "names = available_extractors()\n"
        "loaded = [m for m in (*base.FAMILY_MODULES, 'torch') if m in sys.modules]\n"
        "print(len(names), loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1)[1].strip() == "[]", out


def test_an_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown extractor 'nope'; choose one of: aisfx, birdnet"):
        get_extractor("nope")


def test_an_entry_point_adds_an_extractor(installed):
    installed(entry_point("plugin_stats", f"{__name__}:PluginExtractor"))
    assert "plugin_stats" in available_extractors()
    assert get_extractor_class("plugin_stats") is PluginExtractor
    extractor = get_extractor("plugin_stats", scale=2.0)
    np.testing.assert_allclose(extractor.embed(np.array([[0.5, -1.0]])), [[-0.5, 2.0]])
    info = {i.name: i for i in describe_extractors()}["plugin_stats"]
    assert (info.dim, info.sample_rate, info.input_kind) == (2, 8000, "waveform")


def test_an_entry_point_may_name_a_function_of_the_name(installed):
    installed(entry_point("plugin_scaled", f"{__name__}:plugin_class"))
    cls = get_extractor_class("plugin_scaled")
    assert issubclass(cls, PluginExtractor) and cls.name == "plugin_scaled"


def test_a_broken_entry_point_is_one_clear_error_and_breaks_nothing_else(installed, caplog):
    installed(entry_point("broken_net", "specfusion_no_such_package.nets:Net"))
    assert "broken_net" in available_extractors()  # listed by name, not loaded
    with pytest.raises(ConfigError) as info:
        get_extractor("broken_net")
    message = str(info.value)
    assert "'broken_net'" in message and "specfusion_no_such_package.nets:Net" in message
    assert ENTRY_POINT_GROUP in message and "ModuleNotFoundError" in message
    assert get_extractor_class("aisfx").name == "aisfx"
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        names = [i.name for i in describe_extractors()]
    assert "broken_net" not in names and BUILTIN_NAMES <= set(names)
    assert "specfusion_no_such_package.nets:Net" in caplog.text


@pytest.mark.parametrize(
    ("value", "problem"),
    [("numpy:ndarray", "not a subclass"), (f"{__name__}:PluginExtractor", "name is 'plugin_stats', not 'other'")],
)
def test_an_entry_point_must_give_the_extractor_it_names(installed, value, problem):
    installed(entry_point("other", value))
    with pytest.raises(ConfigError, match=problem):
        get_extractor_class("other")


def test_builtin_names_win_over_entry_points(installed, caplog):
    installed(entry_point("vgg16", f"{__name__}:PluginExtractor"))
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        assert available_extractors().count("vgg16") == 1
    assert "is ignored: 'vgg16' is a built-in extractor" in caplog.text
    assert get_extractor_class("vgg16") is not PluginExtractor


def test_a_name_declared_twice_is_refused(installed):
    installed(
        entry_point("plugin_stats", f"{__name__}:PluginExtractor"),
        entry_point("plugin_stats", f"{__name__}:plugin_class"),
    )
    with pytest.raises(ConfigError, match="declared by more than one installed package"):
        get_extractor_class("plugin_stats")


def test_register_adds_a_class_defined_in_code_but_no_builtin_name(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {})

    @register("in_code")
    class InCode(PluginExtractor):
        pass

    assert InCode.name == "in_code" and get_extractor_class("in_code") is InCode
    assert "in_code" in available_extractors()
    with pytest.raises(ConfigError, match="is built in"):
        register("vgg16")(InCode)
    with pytest.raises(ConfigError, match="already registered"):
        register("in_code")(PluginExtractor)
