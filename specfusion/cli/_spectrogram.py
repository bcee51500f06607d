"""Spectrogram options of the commands that compute Mel-spectrograms (``extract``, ``melspec``, ``crnn``).

``--window``, ``--hop``, ``--n-mels``, ``--fmin`` and ``--fmax`` map to the fields of
:class:`~specfusion.features.spectrogram.MelSpecParams` (a recipe's ``spec_params`` table); a flag left out keeps the
paper's value. ``--clip-db`` stays each command's own option (its default differs: none for images and
``melspec``, the variant's for the CRNN).
"""

from __future__ import annotations

import argparse

from specfusion.cli._common import parse_number
from specfusion.features.spectrogram import HOP_SECONDS, N_MELS, WINDOW_SECONDS

#: CLI attribute -> MelSpecParams field.
SPECTROGRAM_OPTIONS = {"window": "window_s", "hop": "hop_s", "n_mels": "n_mels", "fmin": "fmin", "fmax": "fmax"}


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _float(text: str) -> float:
    value = parse_number(text, float)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = parse_number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_spectrogram_arguments(
    parser: argparse.ArgumentParser, *, title: str = "spectrogram", deepspectrum_stft: bool = False
) -> None:
    """``--window``, ``--hop``, ``--n-mels``, ``--fmin``, ``--fmax`` (default: the paper's values).

    ``deepspectrum_stft``: say in the help that the window and hop default to DEEP SPECTRUM's STFT (image CNNs).
    """
    group = parser.add_argument_group(title, "Mel-spectrogram parameters (default: the paper's, docs/spectrogram.md)")
    default_window = "DEEP SPECTRUM's STFT, 0.032 at 16 kHz" if deepspectrum_stft else WINDOW_SECONDS
    group.add_argument(
        "--window", type=positive_float, metavar="S", help=f"window length in seconds (default {default_window})"
    )
    group.add_argument(
        "--hop",
        type=positive_float,
        metavar="S",
        help=f"hop between frames in seconds (default {'half the window' if deepspectrum_stft else HOP_SECONDS})",
    )
    group.add_argument("--n-mels", type=_positive_int, metavar="N", help=f"Mel bands (default {N_MELS})")
    group.add_argument(
        "--fmin", type=non_negative_float, metavar="HZ", help="lowest frequency of the Mel filters (default 0)"
    )
    group.add_argument(
        "--fmax",
        type=positive_float,
        metavar="HZ",
        help="highest frequency of the Mel filters (default: half the sample rate)",
    )


def spectrogram_options(args: argparse.Namespace) -> dict:
    """The :class:`~specfusion.features.spectrogram.MelSpecParams` fields the user gave (empty: the paper's)."""
    return {field: getattr(args, attribute) for attribute, field in SPECTROGRAM_OPTIONS.items()
            if getattr(args, attribute, None) is not None}  # fmt: skip


def given_flags(args: argparse.Namespace) -> list[str]:
    """The spectrogram flags given, as typed (``--hop`` ...), for error messages."""
    return ["--" + a.replace("_", "-") for a in SPECTROGRAM_OPTIONS if getattr(args, a, None) is not None]
