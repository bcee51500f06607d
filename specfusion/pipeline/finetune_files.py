"""Fine-tuned systems in model files (``model.sfm``, docs/models.md): writing, load-time checks, prediction.

A fine-tuned system's description (``model.json``'s ``system``) is ``{"type": "finetune", "name", "classes",
"params" (the estimator's resolved parameters), "metric", "inputs" (the front end's kind), "frontend" (its
``as_dict()``), "sr", "n_mels", "in_channels", "n_frames", "short", "folds": [{"fold", "input_mean",
"input_std", "state_dict": {tensor name: array key}}]}``; every fold model's whole state dict (pretrained
blocks included) is in ``arrays.npz``. The loader checks the description first (:func:`finetune_specs`: classes,
sizes bounded, every array's shape from the network built on torch's ``meta`` device, the statistics) and the
front end this installation computes against the recorded one, then builds the fold models
(:class:`FineTuneSystem`): a clip's scores are the mean of their probabilities, as the fold protocol scores
test items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from specfusion.errors import AudioError, ConfigError, ModelError
from specfusion.identity import canonical_json
from specfusion.pipeline import model_checks as checks
from specfusion.pipeline.systems import SavedSystem, Scored, _archive, _array, _first_rate, _mono, _where


def finetune_result_bytes(result, table, *, short: str = "pad", name: str = "") -> bytes:
    """The model file of a :func:`~specfusion.models.finetune.protocol.finetune_fold_protocol` result."""
    from specfusion.models.crnn.checkpoints import statistic_to_plain
    from specfusion.models.finetune import FineTuneClassifier

    folds = list(result.checkpoints)
    models = [FineTuneClassifier.load(result.checkpoints[k], device="cpu") for k in folds]
    inputs = result.config["inputs"]
    arrays: dict[str, np.ndarray] = {}
    fold_nodes = []
    for k, model in zip(folds, models, strict=True):
        state = {}
        for key, tensor in model.network_.state_dict().items():
            arrays[f"fold{k}/{key}"] = tensor.detach().cpu().numpy()
            state[key] = f"fold{k}/{key}"
        fold_nodes.append({"fold": int(k), "input_mean": statistic_to_plain(model.input_mean_),
                           "input_std": statistic_to_plain(model.input_std_), "state_dict": state})  # fmt: skip
    first = models[0]
    node = {
        "type": "finetune", "name": name, "classes": [str(c) for c in first.classes_], "params": first.resolved_params(),
        "metric": first.metric, "inputs": inputs["kind"], "frontend": inputs["frontend"],
        "sr": int(inputs["sr"] or _first_rate(table)), "n_mels": int(first.n_mels_), "in_channels": int(first.in_channels_),
        "n_frames": int(inputs["shape"][-1]), "short": short, "folds": fold_nodes,
    }  # fmt: skip
    if any(item.channel is not None for item in table):  # trained on channel items: scored per channel, as the run
        node.update(channels="each", combine=result.predictions.config.get("combine", "mean"))
    return _archive(node, arrays)


def finetune_specs(node: dict, where) -> dict:
    """Check a fine-tuned system's description and derive every array's :class:`~specfusion.pipeline.model_checks.ArraySpec`."""
    from specfusion.models.finetune.networks import NETWORKS, meta_network

    classes = checks._classes(node, where)
    n_mels = checks._positive(node.get("n_mels"), "n_mels", where)
    in_channels = checks._positive(node.get("in_channels"), "in_channels", where, at_most=3)
    checks._positive(node.get("sr"), "sr", where, at_most=checks.MAX_SAMPLE_RATE, why=" Hz (MAX_SAMPLE_RATE)")
    checks._positive(node.get("n_frames"), "n_frames", where, at_most=checks.MAX_SPECTROGRAM_VALUES // n_mels,
                     why=f" for {n_mels} bands (MAX_SPECTROGRAM_VALUES)")  # fmt: skip
    checks._choice(node.get("short", "pad"), ("pad", "error"), "short", where)
    checks._choice(node.get("channels", "mean"), ("mean", "each"), "channels", where)
    checks._choice(node.get("combine", "mean"), ("mean", "max", "none"), "combine", where)
    params = checks._dict(node, "params", where)
    checks._choice(params.get("network"), NETWORKS, "the network", where)
    folds = node.get("folds")
    if not isinstance(folds, list) or not folds or not all(isinstance(f, dict) for f in folds):
        raise ModelError(where, "a fine-tuned model needs a non-empty list of folds")
    try:
        shapes = meta_network(params["network"], len(classes), in_channels=in_channels,
                              depth=params.get("depth")).state_dict()  # fmt: skip
    except (ConfigError, ValueError, TypeError, RuntimeError) as err:
        raise ModelError(where, f"the recorded network cannot be built ({err})") from None
    specs: dict = {}
    for fold in folds:
        label, state = f"fold {fold.get('fold')}", checks._dict(fold, "state_dict", where)
        checks._check_statistics(fold, n_mels, label, where)
        if set(state) != set(shapes):
            odd = sorted(set(state) ^ set(shapes))[0]
            raise ModelError(where, f"{label}: the state dict does not match the recorded network (tensor {odd!r})")
        for name, key in state.items():
            if not isinstance(key, str) or key in specs:
                raise ModelError(where, f"{label}: {name} must name an array of its own, got {key!r}")
            tensor = shapes[name]
            specs[key] = checks.ArraySpec(tuple((n, True) for n in tensor.shape), f"{label}'s {name} of the recorded "
                                          "network", kinds="f" if tensor.dtype.is_floating_point else "iu")  # fmt: skip
    return specs


class FineTuneSystem(SavedSystem):
    """The network's front end -> every fold's fine-tuned network; the mean of their probabilities."""

    kind = "proba"

    def __init__(self, node: dict, info: dict, arrays, where, *, device: str | None = None):
        super().__init__(node, info)
        import torch

        from specfusion.models.crnn.checkpoints import statistic_from_plain
        from specfusion.models.finetune import FineTuneClassifier
        from specfusion.models.finetune.inputs import frontend

        self.frontend = frontend(node["inputs"])
        if canonical_json(self.frontend.as_dict()) != canonical_json(node["frontend"]):
            raise ModelError(where, "the front end this installation computes differs from the saved one; use the "
                             "specfusion version that wrote the model")  # fmt: skip
        self.sr, self.n_frames, self.short = int(node["sr"]), int(node["n_frames"]), node.get("short", "pad")
        params = {k: v for k, v in node["params"].items()}
        self.models = []
        for fold in node["folds"]:
            model = FineTuneClassifier(**params, metric=node.get("metric", "accuracy"), classes=list(node["classes"]),
                                       device=device)  # fmt: skip
            model.classes_ = np.asarray(node["classes"], dtype=object)
            model.n_mels_, model.in_channels_ = int(node["n_mels"]), int(node["in_channels"])
            model.input_mean_ = statistic_from_plain(fold["input_mean"])
            model.input_std_ = statistic_from_plain(fold["input_std"])
            model.history_ = []
            state = {
                name: torch.from_numpy(np.array(_array(arrays, key, where))) for name, key in fold["state_dict"].items()
            }
            model.network_ = model.network_from_state(state, where)
            self.models.append(model)

    def inputs(self, sources: Sequence) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(rows, inputs cropped or padded to the training length, failures) of ``sources``."""
        from specfusion.features.extraction import item_error
        from specfusion.models.crnn.spectrograms import fixed_length

        rows, specs, failures = [], [], {}
        for i, source in enumerate(sources):
            try:
                y = _mono(source, rate=self.sr, min_seconds=self.frontend.window_s, short=self.short)
                specs.append(self.frontend(y, self.sr))
                rows.append(i)
            except MemoryError:
                raise
            except (AudioError, ConfigError) as err:
                failures[i] = getattr(err, "reason", str(err))
            except Exception as err:  # noqa: BLE001 -- one clip's front end must not stop the others
                failures[i] = item_error(_where(source), err).reason
        X = fixed_length(specs, frontend=self.frontend, n_frames=self.n_frames) if specs else np.zeros((0,))
        return np.asarray(rows, dtype=np.int64), X, failures

    def _reading(self) -> dict:
        return {"rate": self.sr, "min_seconds": self.frontend.window_s, "short": self.short}

    def _score_signals(self, sources: Sequence) -> Scored:
        rows, X, failures = self.inputs(sources)
        total = np.zeros((len(rows), len(self.classes_)))
        if len(rows):
            for model in self.models:
                total += model.predict_proba(X)
        return Scored(rows=rows, scores=total / len(self.models), failures=failures)
