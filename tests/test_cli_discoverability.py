"""Issue 17: `specfusion extractors`, the registry in `extract --help`, spectrogram flags and recipe keys,
help examples. Nothing here builds a pre-trained network."""

import json

import numpy as np
import pytest

from specfusion.cli import COMMAND_MODULES, build_parser, main
from specfusion.errors import ConfigError
from specfusion.features.extractors.base import FAMILY_MODULES, available_extractors, get_extractor_class

SINS = "sins_4ch_16khz_16bit_10s.wav"


def builtin_extractors() -> list[str]:
    """Registered names of the built-in families (tests elsewhere may register their own)."""
    return [n for n in available_extractors() if get_extractor_class(n).__module__ in FAMILY_MODULES]


def extractors_json(capsys) -> dict:
    assert main(["extractors", "--json"]) == 0
    return {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}


def test_extractors_lists_every_registered_extractor_with_dim_rate_and_weights(capsys):
    names = builtin_extractors()
    assert len(names) >= 12
    listed = extractors_json(capsys)
    for name in names:
        entry = listed[name]
        assert entry["dim"] > 0 and entry["sample_rate"] > 0, name
        assert entry["weights"], name
        for option in entry["weights"]:
            assert option["value"] in ("imagenet", "pretrained", "none")
            assert (option["present"] is None) == (option["value"] == "none")
            assert option["licence"] or option["value"] == "none"
    assert listed["soundnet"]["dim_rule"].startswith("layer: conv5 256, conv6 512, conv7 1024")
    assert "mean+max" in listed["panns_cnn14"]["dim_rule"]
    assert main(["extractors"]) == 0
    table = capsys.readouterr().out
    for name in names:
        assert f"\n{name} " in table
    assert "NON-COMMERCIAL" in table  # BirdNET's licence is shown


def test_image_cnn_dimensions_match_the_networks():
    import torch

    from specfusion.features.extractors.image_cnns import ImageCNNExtractor
    from specfusion.features.nets import NETWORKS

    for name in builtin_extractors():
        cls = get_extractor_class(name)
        if issubclass(cls, ImageCNNExtractor):
            with torch.device("meta"):
                net = NETWORKS[cls.network].build()
            assert cls.describe().dim == int(net.feature_dim), name


def test_weights_presence_follows_the_file_in_specfusion_home(tmp_path, monkeypatch, capsys):
    from specfusion.features.extractors.image_cnns import IMAGE_CNNS

    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path))
    imagenet = extractors_json(capsys)["vgg16"]["weights"][0]
    assert imagenet["value"] == "pretrained" and imagenet["present"] is False
    assert str(tmp_path / "weights") in imagenet["where"]
    target = tmp_path / "weights" / IMAGE_CNNS["vgg16"].weights.filename
    target.parent.mkdir()
    target.write_bytes(b"not loaded, only found")
    imagenet = extractors_json(capsys)["vgg16"]["weights"][0]
    assert imagenet["present"] is True and imagenet["where"] == str(target)
    target.unlink()
    assert extractors_json(capsys)["vgg16"]["weights"][0]["present"] is False


def test_extract_help_lists_every_registered_extractor(capsys):
    with pytest.raises(SystemExit) as info:
        main(["extract", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in builtin_extractors():
        assert name in text, name


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_every_command_help_ends_with_an_example(module, capsys):
    command = module.rsplit(".", 1)[1]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    example = lines.index("example:")
    assert all(line.startswith(f"  specfusion {command}") or line.startswith("      ") for line in lines[example + 1 :])
    assert len(lines) - example <= 3


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_every_command_help_lists_verbosity_after_its_own_options(module, capsys):
    command = module.rsplit(".", 1)[1]
    words = ["datasets", "inspect"] if command == "datasets" else [command]
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    options = capsys.readouterr().out.split("\noptions:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    flags = [line.split()[0] for line in options if line.startswith("  -")]
    assert flags[-2:] == ["-v,", "-q,"], flags


def test_melspec_hop_flag_reaches_the_spectrogram_and_says_what_it_wrote(esc50_root, tmp_path, capsys):
    clip = str(esc50_root / "audio" / "1-100032-A-0.flac")  # 5 s at 16 kHz
    assert main(["melspec", clip, "--out", str(tmp_path / "paper.npy")]) == 0
    said = capsys.readouterr().out
    assert f"{tmp_path / 'paper.npy'}: float32 dB Mel-spectrogram, shape 128 x 32" in said
    fine = ["--hop", "0.08", "--n-mels", "64", "--fmax", "4000"]
    assert main(["melspec", clip, "--out", str(tmp_path / "fine.npy"), *fine]) == 0
    assert "shape 64 x 63" in capsys.readouterr().out
    paper, fine = np.load(tmp_path / "paper.npy"), np.load(tmp_path / "fine.npy")
    assert paper.shape == (128, 32) and fine.shape == (64, 63)  # 1 + n // hop frames: ~2x with half the hop


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--hop", "0"], 2, "argument --hop: must be positive, got 0"),
        (["--window", "nan"], 2, "argument --window: must be a finite number"),
        (["--n-mels", "0"], 2, "argument --n-mels: must be at least 1"),
        (["--fmin", "-1"], 2, "argument --fmin: must be at least 0"),
        (["--fmin", "5000", "--fmax", "100"], 1, "need 0 <= fmin < fmax"),
    ],
)
def test_bad_spectrogram_value_is_one_line(flags, code, message, formats_dir, tmp_path, capsys):
    args = ["melspec", str(formats_dir / SINS), "--out", str(tmp_path / "x.npy"), *flags]
    if code == 2:
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
    else:
        assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "x.npy").exists()


def test_extract_spectrogram_flags_reach_the_store_config_and_are_refused_for_audio_nets():
    from specfusion.cli.extract import extractor_options
    from specfusion.features.extraction import store_config
    from specfusion.features.extractors import get_extractor

    parser = build_parser()
    base = ["extract", "--dataset", "esc50", "--root", ".", "--out", "x.h5", "--weights", "none"]
    args = parser.parse_args([*base, "--extractor", "efficientnet_lite0", "--hop", "0.08", "--fmax", "4000"])
    options = extractor_options(args, get_extractor_class("efficientnet_lite0"))
    assert options["spec_params"] == {"hop_s": 0.08, "fmax": 4000.0}
    changed = get_extractor("efficientnet_lite0", device="cpu", **options)
    paper = get_extractor("efficientnet_lite0", device="cpu", weights="none")
    assert changed.config()["spectrogram"]["hop_s"] == 0.08 and changed.config()["spectrogram"]["fmax"] == 4000.0
    assert store_config(changed) != store_config(paper)
    args = parser.parse_args([*base, "--extractor", "panns_cnn14", "--hop", "0.08"])
    with pytest.raises(ConfigError, match="--hop only apply to the image CNNs"):
        extractor_options(args, get_extractor_class("panns_cnn14"))


def test_crnn_spectrogram_cache_and_step_keys_change_with_hop(esc50_root, tmp_path):
    from specfusion.data.datasets import load_dataset
    from specfusion.models.crnn.spectrograms import spectrogram_set
    from specfusion.pipeline.recipes import parse_recipe
    from specfusion.pipeline.runner import RecipeRunner

    table = load_dataset("esc50", esc50_root)
    two = table.subset(np.arange(2))
    paper = spectrogram_set(two, cache_dir=tmp_path, workers=1)
    fine = spectrogram_set(two, cache_dir=tmp_path, workers=1, spec_params={"hop_s": 0.08})
    assert paper.S.shape == (2, 128, 32) and fine.S.shape == (2, 128, 63)
    assert len(list(tmp_path.glob("spectrograms-*.npy"))) == 2  # two cache keys

    recipe = parse_recipe("[dataset]\nkind='esc50'\n[[systems]]\nname='c'\nkind='crnn'\nspec_params={hop_s=0.08}\n")
    assert recipe.systems[0].options["spec_params"] == {"hop_s": 0.08}
    runner = RecipeRunner(recipe, root=esc50_root, out_dir=tmp_path / "run")
    default = runner.crnn_key({})
    assert runner.crnn_key({"spec_params": {}}) == default  # the paper's values: the key made before stays valid
    assert runner.crnn_key({"spec_params": {"hop_s": 0.08}}) != default
    assert runner.crnn_key({"spec_params": {"hop_s": 0.08}}) != runner.crnn_key({"spec_params": {"hop_s": 0.04}})


def test_recipe_spec_params_keys_are_checked():
    with pytest.raises(ConfigError, match="unknown key 'hop'.*did you mean 'hop_s'"):
        parse_recipe_text("kind='crnn'\nspec_params={hop=0.08}")
    with pytest.raises(ConfigError, match="'hop_s' must be a number"):
        parse_recipe_text("kind='deepspectrum'\nextractor='efficientnet_lite0'\nspec_params={hop_s='fast'}")


def test_crnn_protocol_takes_clipping_from_clip_db_only(esc50_root, tmp_path):
    from specfusion.data.datasets import load_dataset
    from specfusion.models.crnn import crnn_fold_protocol

    with pytest.raises(ConfigError, match="clipping with clip_db, not spec_params.clip_db"):
        crnn_fold_protocol(load_dataset("esc50", esc50_root), out_dir=tmp_path, spec_params={"clip_db": -60.0})


def parse_recipe_text(system: str):
    from specfusion.pipeline.recipes import parse_recipe

    return parse_recipe(f"[dataset]\nkind='esc50'\n[[systems]]\nname='s'\n{system}\n")


def test_version_is_the_installed_distributions(capsys):
    import importlib.metadata

    import specfusion

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"specfusion {importlib.metadata.version('specfusion')}"
    assert specfusion.__version__ == importlib.metadata.version("specfusion")  # pyproject.toml and __init__ agree
