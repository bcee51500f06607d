"""Recipe parsing: the shipped recipes are valid and reproduce Table 3's rows; bad recipes fail clearly."""

from pathlib import Path

import pytest

from specfusion.errors import ConfigError
from specfusion.models.crnn import AUGMENTED
from specfusion.pipeline.recipes import load_recipe, parse_recipe, split_best

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

TABLE3_ROWS = {
    "DenseNet121 / ImageNet", "DenseNet121 / None", "ResNet50 / ImageNet", "ResNet50 / None",
    "VGG16 / ImageNet", "VGG16 / None", "VGG19 / ImageNet", "VGG19 / None",
    "openl3 / AudioSet", "PANN CNN14 / AudioSet",
}  # fmt: skip
TABLE3_FUSIONS = {
    "ImageNet pre-trained DEEP SPECTRUM", "All untrained DEEP SPECTRUM", "All DEEP SPECTRUM", "CRNN + DEEP SPECTRUM",
    "DEEP SPECTRUM + AudioSet nets", "CRNN + AudioSet nets + DEEP SPECTRUM",
}  # fmt: skip


@pytest.mark.parametrize("name", ["esc50", "dcase2017", "dcase2018"])
def test_paper_recipes_hold_every_table3_row(name):
    recipe = load_recipe(RECIPES / f"{name}.toml")
    assert recipe.dataset_kind == name
    names = {s.name for s in recipe.systems}
    assert TABLE3_ROWS <= names
    assert TABLE3_FUSIONS <= {f.name for f in recipe.fusions}
    assert all(s.paper.devel is not None for s in recipe.systems)
    assert all(f.paper.devel is not None and f.paper.test is not None for f in recipe.fusions)
    imagenet = recipe.select(("tag:imagenet",))
    assert {s.options["extractor"] for s in imagenet} == {"densenet121", "resnet50", "vgg16", "vgg19"}
    assert all(s.options["weights"] == "imagenet" for s in imagenet)


def test_dcase2018_recipe_has_table1_crnns_and_best3_fusion():
    recipe = load_recipe(RECIPES / "dcase2018.toml")
    crnns = recipe.select(("tag:crnn",))
    assert len(crnns) == 8
    assert {(s.options["lr"], s.options["batch_size"], s.options["clip_db"]) for s in crnns} >= {
        (0.01, 64, -30),
        (0.01, 64, -45),
        (0.01, 64, -60),
    }
    best3 = next(f for f in recipe.fusions if f.best == 3)
    assert best3.paper.devel == 81.4 and best3.paper.test == 82.2
    assert any("best:3:tag:crnn" in f.members for f in recipe.fusions)


def test_offline_recipe_runs_without_downloads():
    recipe = load_recipe(RECIPES / "esc50-offline.toml")
    features = [s for s in recipe.systems if s.kind in ("deepspectrum", "audio")]
    extractors = {(s.options.get("extractor"), s.options.get("weights")) for s in features}
    assert extractors == {
        ("densenet121", "none"), ("resnet50", "none"), ("vgg16", "none"), ("vgg19", "none"),
        ("efficientnet_lite0", "imagenet"), ("efficientnet_lite1", "imagenet"), ("efficientnet_lite2", "imagenet"),
        ("aisfx", "pretrained"), ("birdnet", None), ("soundnet", None), ("yamnet", None),
    }  # fmt: skip
    finetuned = [s.options for s in recipe.systems if s.kind == "finetune"]
    assert [(o["network"], o.get("depth"), o.get("freeze")) for o in finetuned] == [
        ("yamnet", None, None),
        ("yamnet", 12, 10),
    ]
    assert {s.name for s in recipe.select(("tag:finetuned",))} == {
        s.name for s in recipe.systems if s.kind == "finetune"
    }
    assert any(s.kind == "crnn" for s in recipe.systems)
    crnn = [s.options for s in recipe.systems if s.kind == "crnn"]
    assert len(crnn) == 1 and "mixed_precision" not in crnn[0]  # float32 on the CPU unless the user asks
    assert not any(crnn[0].get(k) for k in AUGMENTED)  # the augmented CRNN is an option, not in the main job
    assert {s.options["extractor"] for s in recipe.select(("tag:audionet",))} == {"aisfx", "birdnet", "soundnet"}
    assert all("pooling" in s.options for s in recipe.select(("tag:audionet",)))  # chosen explicitly
    assert {f.name for f in recipe.fusions} == {
        "ImageNet pre-trained DEEP SPECTRUM", "All untrained DEEP SPECTRUM", "All DEEP SPECTRUM",
        "CRNN + DEEP SPECTRUM", "DEEP SPECTRUM + audio nets", "CRNN + audio nets + DEEP SPECTRUM",
        "CRNN + audio net + DEEP SPECTRUM (paper stacking)", "Audio nets + YAMNet",
        "ImageNet DEEP SPECTRUM + audio nets + YAMNet", "ImageNet DEEP SPECTRUM + audio nets + YAMNet + fine-tuned",
        "All systems",
    }  # fmt: skip
    # the paper's groups keep the paper's members: YAMNet and fine-tuning only in the groups named after them
    paper_groups = [f for f in recipe.fusions if f.paper.devel is not None]
    assert paper_groups and not any({"tag:yamnet", "tag:finetuned"} & set(f.members) for f in paper_groups)
    # every group fuses with the recipe's default method; one row keeps the paper's stacking for Table 3
    assert {f.name: f.method for f in recipe.fusions if f.method != "weighted"} == {
        "CRNN + audio net + DEEP SPECTRUM (paper stacking)": "stacking-svm"
    }


def test_grid_expands_into_named_systems():
    recipe = parse_recipe(
        """
        [dataset]
        kind = "esc50"
        [[systems]]
        name = "CRNN"
        kind = "crnn"
        grid = { lr = [0.01, 0.001], batch_size = [64, 128] }
        """
    )
    assert [s.name for s in recipe.systems] == [
        "CRNN (lr=0.01, batch_size=64)", "CRNN (lr=0.01, batch_size=128)",
        "CRNN (lr=0.001, batch_size=64)", "CRNN (lr=0.001, batch_size=128)",
    ]  # fmt: skip
    assert recipe.systems[3].config() == {"kind": "crnn", "lr": 0.001, "batch_size": 128}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[dataset]\nkind='esc50'\n", "no \\[\\[systems\\]\\]"),
        ("title = 'x'\n", "needs a \\[dataset\\] table"),
        ("[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='svm'\n", "kind must be one of"),
        ("[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='deepspectrum'\n", "needs 'extractor'"),
        (
            "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\n[[systems]]\nname='a'\nkind='crnn'\n",
            "duplicate system name",
        ),
        (
            "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\n[[fusions]]\nname='f'\nmembers=['tag:x']\n",
            "member 'tag:x' matches no system",
        ),
        (  # one member matching nothing is an error even when others match (never dropped silently)
            "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\n[[fusions]]\nname='f'\nmembers=['a', 'nosuch']\n",
            "member 'nosuch' matches no system \\(systems: a; tags: none\\)",
        ),
        (
            "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\ntags=['t']\n[[fusions]]\nname='f'\n"
            "members=['a', 'tag:nope']\n",
            "member 'tag:nope' matches no system \\(systems: a; tags: t\\)",
        ),
        (
            "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\n[[systems]]\nname='b'\nkind='crnn'\n"
            "[[fusions]]\nname='f'\nmembers=['a', 'b']\n[[fusions]]\nname='g'\nmembers=['f', 'a']\n",
            "member 'f' is a fusion",
        ),
        (
            "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\n[[fusions]]\nname='f'\nmembers=['a', 'a']\n",
            "member 'a' is listed twice",
        ),
        (
            "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\n[[fusions]]\nname='a'\nmembers=['a']\n",
            "must be unique",
        ),
        ("[dataset\n", "not valid TOML"),
    ],
)
def test_invalid_recipes_fail_clearly(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(text)


def test_best_selector():
    assert split_best("best:3:tag:crnn") == (3, "tag:crnn")
    assert split_best("VGG*") == (None, "VGG*")
    with pytest.raises(ConfigError):
        split_best("best:x:tag:crnn")


def test_run_table_names_the_dask_address():
    text = "[dataset]\nkind='esc50'\n[[systems]]\nname='a'\nkind='crnn'\n"
    assert parse_recipe(text).dask is None
    assert parse_recipe("[run]\ndask = 'local:2'\n" + text).dask == "local:2"
    with pytest.raises(ConfigError, match=r"\[run\]: unknown key 'dsk'"):
        parse_recipe("[run]\ndsk = 'local:2'\n" + text)


def test_subset_keeps_named_fusions_with_their_members_and_named_systems():
    recipe = load_recipe(RECIPES / "esc50-offline.toml")
    cut = recipe.subset(["CRNN + DEEP SPECTRUM", "SoundNet*"])
    assert [f.name for f in cut.fusions] == ["CRNN + DEEP SPECTRUM"]
    expected = {s.name for s in recipe.select(("tag:crnn", "tag:deepspectrum", "SoundNet*"))}
    assert {s.name for s in cut.systems} == expected and "BirdNET" not in " ".join(expected)
    assert [s.name for s in cut.systems] == [s.name for s in recipe.systems if s.name in expected]  # recipe order
    assert all(s == recipe.system(s.name) for s in cut.systems)  # defined (and so keyed) as in the whole recipe
    with pytest.raises(ConfigError, match="matches no system or fusion"):
        recipe.subset(["no such system"])
