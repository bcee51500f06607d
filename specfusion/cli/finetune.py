"""``specfusion finetune --dataset NAME --root DIR --network NET --out DIR``: a pretrained network fine-tuned per fold.

The CRNN's protocol and outputs (``specfusion crnn``) with :class:`~specfusion.models.finetune.FineTuneClassifier`:
the input cache, ``fold<k>.pt`` checkpoints (a re-run reuses those whose identity matches), ``predictions.csv``,
``metrics.json``, ``report.md``, the confusion matrices, ``learning_curve.png`` and ``model.sfm`` (for
``specfusion predict``). docs/finetune.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specfusion.cli._common import (
    add_command,
    add_dataset_arguments,
    add_short_argument,
    check_device,
    check_output_dir,
    finish_command,
    load_dataset_from_args,
    progress_enabled,
)
from specfusion.errors import ConfigError

#: The flag of each estimator option (for the error line).
FLAGS = {"epochs": "--epochs", "lr": "--lr", "batch_size": "--batch-size", "freeze": "--freeze", "depth": "--depth",
         "backbone_lr_scale": "--backbone-lr-scale", "mixup": "--mixup", "crop": "--crop", "num_threads": "--threads",
         "seed": "--finetune-seed", "n_jobs": "--jobs", "warmup_epochs": "--warmup-epochs",
         "weight_decay": "--weight-decay"}  # fmt: skip
#: ``--augment``: SpecAugment masks and a time shift (in input frames and bands) besides the default mixup.
AUGMENT = {"time_shift": 20, "freq_masks": 2, "freq_width": 8, "time_masks": 2, "time_width": 40}

HELP = "fine-tune a pretrained network (YAMNet, EfficientNet-Lite) per development fold"
DESCRIPTION = (
    "Fine-tune a pretrained network with a new classification head, one model per development fold (trained "
    "on the other folds); out-of-fold probabilities are the development predictions, the mean of the fold "
    "models' probabilities the test predictions (the CRNN's protocol). Also saves DIR/model.sfm for "
    "`specfusion predict`. Defaults per network: see docs/finetune.md."
)
EXAMPLE = """example:
  specfusion finetune --dataset esc50 --root ../shared/data/ESC-50 --network yamnet --out runs/finetune-yamnet"""


def register(subparsers) -> None:
    from specfusion.models.finetune.inputs import INPUTS
    from specfusion.models.finetune.networks import NETWORKS

    parser = add_command(subparsers, "finetune", HELP, DESCRIPTION, EXAMPLE)
    add_dataset_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder (input cache, checkpoints, predictions, metrics)")
    parser.add_argument("--network", choices=NETWORKS, default="yamnet", help="pretrained network (default yamnet)")
    parser.add_argument("--inputs", choices=INPUTS,
                        help="front end: yamnet (YAMNet's log-Mel), mel or multires (3-channel, Palanisamy et al. "
                        "2020) for EfficientNet-Lite (default: yamnet for YAMNet, mel otherwise)")  # fmt: skip
    parser.add_argument(
        "--freeze", type=int, help="leading blocks kept fixed (default: the network's; yamnet 12 of 14)"
    )
    parser.add_argument("--depth", type=int,
                        help="keep only the first N blocks, the head on the last kept one (default: all)")  # fmt: skip
    parser.add_argument("--no-cache-frozen", action="store_true",
                        help="run the frozen blocks every step instead of once per clip (input-level augmentation)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=30, help="epochs per fold (default 30)")
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's peak learning rate (default 0.001)")
    parser.add_argument("--backbone-lr-scale", type=float, default=0.1,
                        help="trainable pretrained blocks learn at lr x this (default 0.1)")  # fmt: skip
    parser.add_argument("--warmup-epochs", type=float, default=2.0, help="linear warm-up, then cosine (default 2)")
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    parser.add_argument("--mixup", type=float, default=0.2, help="mixup Beta parameter; 0: off (default 0.2)")
    parser.add_argument("--crop", type=float, default=1.0, help="train on random crops of this fraction of a clip")
    parser.add_argument("--augment", action="store_true",
                        help="add time shift and SpecAugment masks (on the cached maps when the prefix is cached)")  # fmt: skip
    parser.add_argument("--combine", choices=("mean", "max", "none"), default="mean",
                        help="channel probabilities -> segment (default mean)")  # fmt: skip
    parser.add_argument("--only-folds", type=int, nargs="+", metavar="K", help="run only these development folds")
    parser.add_argument("--sr", type=int, help="resample audio to this rate (image networks; YAMNet reads 16 kHz)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=1, dest="torch_threads",
                        help="CPU threads for torch per fold model (default 1)")  # fmt: skip
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="folds trained at once, one process each (-1: one per core; default: -1 on the CPU, 1 on "
                        "a GPU); the results are the same bit for bit")  # fmt: skip
    parser.add_argument(
        "--dask", metavar="ADDRESS", help="train the folds as tasks on a Dask cluster (docs/distributed.md)"
    )
    parser.add_argument("--name", help="system name in the report (default: fine-tuned NETWORK)")
    parser.add_argument("--finetune-seed", type=int, default=0, help="base seed; fold k uses seed + k (default 0)")
    add_short_argument(parser)
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from specfusion.cli.crnn import left_out_summary
    from specfusion.models.crnn.parallel import default_jobs
    from specfusion.pipeline.steps import train_finetune_system

    check_output_dir(args.out)
    check_device(args.device)
    options = {
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "freeze": args.freeze, "depth": args.depth,
        "backbone_lr_scale": args.backbone_lr_scale, "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay, "mixup": args.mixup, "crop": args.crop,
        "cache_frozen": not args.no_cache_frozen, "device": args.device, "num_threads": args.torch_threads,
        "seed": args.finetune_seed, "n_jobs": args.jobs if args.jobs is not None else default_jobs(args.device),
    }  # fmt: skip
    if args.augment:
        options.update(AUGMENT)
    check_options(options)
    table = load_dataset_from_args(args)
    name = args.name or f"fine-tuned {args.network}"
    out = Path(args.out)
    step = train_finetune_system(
        table, out, name=name, network=args.network, inputs=args.inputs, sr=args.sr, combine=args.combine,
        folds=args.only_folds, progress=progress_enabled(args), short=args.short, dask=args.dask, **options,
    )  # fmt: skip
    metrics = step.metrics
    devel = "n/a" if metrics["devel"] is None else f"{metrics['devel']:.1f} %"
    test = f", test {metrics['test']:.1f} %" if metrics["test"] is not None else ""
    print(f"{name}: devel {metrics['metric']} {devel}{test}; written to {out}")
    print(left_out_summary(step.fit.failures), end="")
    return 0


def check_options(options: dict) -> None:
    """The estimator's parameter constraints on the options' values, before any work (ConfigError naming the flag)."""
    from specfusion.models.crnn.parallel import resolve_jobs
    from specfusion.models.finetune import FineTuneClassifier
    from specfusion.models.finetune.estimator import check_parameter

    for name, value in options.items():
        try:
            if name == "n_jobs":
                resolve_jobs(value, 1)
            elif name in FineTuneClassifier._parameter_constraints:
                check_parameter(name, value)
        except ConfigError as err:
            raise ConfigError(f"{FLAGS.get(name, name)} {value}: {err}") from None
