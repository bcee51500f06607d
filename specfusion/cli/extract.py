"""``specfusion extract``: features of a whole dataset into a resumable feature store.

    specfusion extract --dataset esc50 --root ../shared/data/ESC-50 --extractor densenet121 \\
        --weights pretrained --colormap viridis --out features/esc50-densenet121.h5

Re-running the same command skips finished items (and tries failed ones again); a store made with
another configuration is refused, never mixed. Items whose audio cannot be used are listed at the end;
the exit code is 0 unless every item failed.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys

from specfusion.cli._common import (
    add_command,
    add_dataset_arguments,
    add_short_argument,
    add_threads,
    check_device,
    check_output_file,
    finish_command,
    load_dataset_from_args,
    positive_int,
    progress_enabled,
)
from specfusion.cli._spectrogram import add_spectrogram_arguments, given_flags, spectrogram_options
from specfusion.errors import ConfigError

log = logging.getLogger(__name__)

#: CLI option -> extractor keyword, passed only when the extractor takes it.
_EXTRACTOR_OPTIONS = {
    "weights": "weights",
    "weights_seed": "seed",
    "init": "init",
    "preprocess": "preprocess",
    "stride_in_1x1": "stride_in_1x1",
    "trim_silence": "trim_silence",
    "renderer": "renderer",
    "colormap": "colormap",
    "clip_db": "clip_db",
    "device": "device",
    "pooling": "pooling",
    "layer": "layer",
}
#: How many failed items the summary lists before abbreviating.
MAX_LISTED_FAILURES = 50
#: Stands in the ``--extractor`` help for the registered names, filled in only when help is shown.
EXTRACTOR_NAMES = "<registered extractors>"

HELP = "extract features of a dataset into a feature store (HDF5, resumable)"
DESCRIPTION = (
    "Stream every item of a dataset through an extractor (e.g. spectrogram image -> ImageNet CNN) "
    "into STORE.h5. Re-running skips finished items; a killed run resumes where it stopped; a store of another "
    "configuration is refused. Items with unusable audio are recorded and listed at the end."
)
EXAMPLE = """example:
  specfusion extract --dataset esc50 --root ../shared/data/ESC-50 --extractor efficientnet_lite0 \\
      --weights imagenet --hop 0.08 --out features/esc50-lite0.h5"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the registered extractors in ``--help`` from the registry; loading it imports every family
    (torch ...), so it is done only when help is shown, not for every command line parsed."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action) or ""
        if EXTRACTOR_NAMES in text:
            from specfusion.features.extractors import available_extractors

            text = text.replace(EXTRACTOR_NAMES, ", ".join(available_extractors()))
        return text


def register(subparsers) -> None:
    parser = add_command(subparsers, "extract", HELP, DESCRIPTION, EXAMPLE, formatter_class=_HelpFormatter)
    add_dataset_arguments(parser)
    group = parser.add_argument_group("extractor")
    group.add_argument("--extractor", required=True, metavar="NAME",
                       help=f"one of {EXTRACTOR_NAMES} (`specfusion extractors` lists their dimensions and "
                       "weights; docs/extractors.md)")  # fmt: skip
    group.add_argument(
        "--weights",
        help="pretrained (default; the network's published weights, alias imagenet), "
        "none (random initialisation) or a checkpoint FILE",
    )
    group.add_argument("--weights-seed", type=int, metavar="N",
                       help="seed of the random initialisation with --weights none (default 0); "
                       "--seed is the seed of generated folds")  # fmt: skip
    group.add_argument("--init", choices=("keras", "keras-he", "torchvision"),
                       help="random initialisation scheme with --weights none (default keras for VGG16/19, ResNet50, "
                       "DenseNet121 -- the paper's Keras models -- else torchvision)")  # fmt: skip
    group.add_argument("--preprocess", choices=("deepspectrum", "torchvision"),
                       help="input preprocessing preset (default deepspectrum for random VGG16/19, ResNet50, "
                       "DenseNet121, else torchvision = the checkpoint's own normalisation)")  # fmt: skip
    group.add_argument("--stride-in-1x1", action=argparse.BooleanOptionalAction, default=None,
                       help="ResNet50 with --weights none: downsample in the first 1x1 convolution of a block (V1, "
                       "Keras' layout; default with a Keras init) or, with --no-stride-in-1x1, in the 3x3 one "
                       "(V1.5, torchvision's)")  # fmt: skip
    group.add_argument(
        "--trim-silence",
        action="store_true",
        default=None,
        help="drop digital zeros at both ends of each clip first, as DEEP SPECTRUM's reader does",
    )
    group.add_argument("--renderer", choices=("specfusion", "deepspectrum"),
                       help="spectrogram image: specfusion (default; resized in data space, fast) or deepspectrum "
                       "(plotted with matplotlib as DEEP SPECTRUM does; with --preprocess deepspectrum its whole "
                       "pipeline)")  # fmt: skip
    group.add_argument("--colormap", help="matplotlib colour map of the spectrogram images (default viridis)")
    group.add_argument(
        "--clip-db",
        type=float,
        metavar="DB",
        help="image CNNs: clip spectrograms below DB dB, e.g. -80 (default: no clipping)",
    )
    group.add_argument("--device", help="torch device, e.g. cpu or cuda (default: a GPU when torch sees one)")
    group.add_argument("--pooling", help="temporal pooling of frame-based audio nets: mean, max, mean+max or mean+std "
                       "(panns_cnn14 also fc1; default: the extractor's)")  # fmt: skip
    group.add_argument(
        "--layer",
        help="embedding layer where the extractor offers several (soundnet: conv5, conv6, conv7; "
        "yamnet: embedding, block1 ... block13)",
    )
    add_spectrogram_arguments(parser, title="spectrogram (image CNNs)", deepspectrum_stft=True)
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--out", required=True, metavar="STORE.h5", help="feature store to create or resume")
    run_group.add_argument("--batch-size", type=positive_int, metavar="N", help="items per network batch (default 16 on CPU, 64 on GPU; "
                           "fixed when the store is created)")  # fmt: skip
    run_group.add_argument(
        "--workers", type=int, metavar="N", help="decoding/front-end threads (default: CPU cores - 1, at least 1)"
    )
    run_group.add_argument("--runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                           help="network runtime: auto (default) = ONNX Runtime for image CNNs on CPU when installed, "
                           "else torch; GPUs always use torch")  # fmt: skip
    add_threads(run_group)
    run_group.add_argument("--dask", metavar="ADDRESS",
                           help="run on a Dask cluster (pip install 'specfusion[dask]'): local (one single-threaded worker "
                           "process per core), local:N, or a scheduler address tcp://HOST:PORT; the store is written "
                           "here (docs/distributed.md)")  # fmt: skip
    run_group.add_argument(
        "--fail-fast", action="store_true", help="stop at the first unusable audio file instead of recording it"
    )
    add_short_argument(run_group)
    finish_command(parser, run)


def extractor_options(args: argparse.Namespace, extractor_class) -> dict:
    """Keyword arguments for ``extractor_class`` from the options the user gave.

    Raises
    ------
    ConfigError
        An option was given that the extractor does not take (e.g. ``--colormap`` for an audio network).
    """
    parameters = inspect.signature(extractor_class.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options = {}
    for attribute, keyword in _EXTRACTOR_OPTIONS.items():
        value = getattr(args, attribute, None)
        if value is None:
            continue
        if keyword not in parameters and not takes_any:
            flag = "--" + attribute.replace("_", "-")
            raise ConfigError(f"extractor {extractor_class.name!r} does not take {flag}")
        options[keyword] = value
    spectrogram = spectrogram_options(args)
    if spectrogram:
        if "spec_params" not in parameters and not takes_any:
            raise ConfigError(f"extractor {extractor_class.name!r} computes no Mel-spectrogram of ours: "
                              f"{' '.join(given_flags(args))} only apply to the image CNNs")  # fmt: skip
        options["spec_params"] = spectrogram
    return options


def run(args: argparse.Namespace) -> int:
    from specfusion.features.extractors import get_extractor_class
    from specfusion.pipeline.steps import extract_store

    check_output_file(args.out)
    check_device(args.device)
    table = load_dataset_from_args(args)
    for problem in table.problems:
        log.warning("%s: %s", table.name, problem)
    options = extractor_options(args, get_extractor_class(args.extractor))
    dask = getattr(args, "dask", None) or None
    result = extract_store(
        table, args.extractor, args.out, options=options, dask=dask, progress=progress_enabled(args), short=args.short,
        batch_size=args.batch_size, runtime=args.runtime, on_error="raise" if args.fail_fast else "record",
        workers=(args.workers or 0) if dask else args.workers,
    )  # fmt: skip
    print(summary(result))
    if result.all_failed:
        print(f"specfusion: error: every item failed; nothing was extracted into {args.out}", file=sys.stderr)
        return 1
    return 0


def summary(result) -> str:
    """The end-of-run report: counts, throughput and the failed items with their reasons."""
    lines = [
        f"{result.store_path}: {result.n_done} of {result.n_items} items have features "
        f"({result.n_extracted} extracted now in {result.seconds:.1f} s, {result.items_per_second:.2f} items/s; "
        f"{result.n_skipped} done before)",
        f"runtime: {result.runtime}; batch size {result.batch_size}, {result.workers} worker thread(s)",
    ]
    if result.failures:
        lines.append(f"{result.n_failed} item(s) failed (no features; fix or remove them and re-run to retry):")
        for uid, reason, path in result.failures[:MAX_LISTED_FAILURES]:
            lines.append(f"  {uid}: {reason} [{path}]")
        if result.n_failed > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {result.n_failed - MAX_LISTED_FAILURES} more (FeatureStore.open(...).failures())")
    problems = getattr(result, "problems", [])
    if problems:
        lines.append(f"{len(problems)} dataset problem(s) (rows or files left out when the dataset was loaded):")
        lines.extend(f"  {p}" for p in problems[:MAX_LISTED_FAILURES])
        if len(problems) > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(problems) - MAX_LISTED_FAILURES} more (specfusion datasets inspect)")
    return "\n".join(lines)
