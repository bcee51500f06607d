"""``specfusion melspec FILE --out OUT.npy``: the paper's dB Mel-spectrogram of one file, and a plot of it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from specfusion.cli._common import add_command, add_short_argument, check_output_file, finish_command, positive_int
from specfusion.cli._spectrogram import add_spectrogram_arguments, spectrogram_options
from specfusion.data.audio import load_audio
from specfusion.errors import AudioError, SignalError
from specfusion.features.spectrogram import MelSpecParams, melspectrogram

HELP = "write the paper's dB Mel-spectrogram of one audio file"
DESCRIPTION = (
    "Compute the paper's Mel-spectrogram (by default periodic Hann 0.32 s, hop 0.16 s, 128 bands, max 0 dB) "
    "of FILE (down-mixed) and write it as float32 .npy of shape (n_mels, frames); prints what it wrote."
)
EXAMPLE = """example:
  specfusion melspec ../shared/data/ESC-50/audio/1-100032-A-0.flac --out dog.npy --png dog.png --clip-db -80"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "melspec", HELP, DESCRIPTION, EXAMPLE)
    parser.add_argument("file", help="audio file (WAV/FLAC/OGG)")
    parser.add_argument("--out", required=True, help="output .npy file")
    parser.add_argument("--sr", type=positive_int, help="resample to this rate first (default: the file's rate)")
    parser.add_argument("--clip-db", type=float, help="clip below this many dB, e.g. -80 (default: no clipping)")
    parser.add_argument("--png", help="also write a labelled plot (time and Hz axes, colour bar)")
    parser.add_argument("--image", help="also write the 224x224 colour-mapped image the image CNNs see (PNG)")
    parser.add_argument(
        "--colormap", default="viridis", help="matplotlib colour map of the plot and image (default viridis)"
    )
    add_spectrogram_arguments(parser)
    add_short_argument(parser)
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    out = check_output_file(args.out)
    for option in ("png", "image"):
        if getattr(args, option):
            check_output_file(getattr(args, option), option=f"--{option}")
    params = MelSpecParams(clip_db=args.clip_db, **spectrogram_options(args))
    y, sr = load_audio(args.file, sr=args.sr, channels="mean", min_seconds=params.window_s, short=args.short)
    try:
        spec = melspectrogram(y[0], sr, params=params)
    except SignalError as err:
        raise AudioError(args.file, str(err)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, spec)
    if args.png:
        from specfusion.evaluation.plots import plot_melspectrogram

        plot_melspectrogram(spec, sr, params=params, path=args.png, title=Path(args.file).name, colormap=args.colormap)
    if args.image:
        from specfusion.features.images import render_rgb, save_png

        save_png(render_rgb(spec, colormap=args.colormap), args.image)
    print(f"{out}: float32 dB Mel-spectrogram, shape {spec.shape[0]} x {spec.shape[1]} (n_mels x frames), "
          f"{sr} Hz, hop {params.hop_s} s")  # fmt: skip
    for option, what in (("png", "labelled plot"), ("image", "network input image")):
        if getattr(args, option):
            print(f"{getattr(args, option)}: {what} (PNG)")
    return 0
