"""`python -m jobs.train`: train one configuration and record it as a one-trial study.

The lab reports' train scripts, recorded: the curves, the kept weights' dice on every test
image, and their predicted masks all go to the results store.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

from core.metrics import spread
from core.store.db import Store, display_url
from core.training.loop import KEEP, TrainConfig
from core.training.trial import run_trial
from jobs import cli
from jobs.search_space import RECIPE

PROG = "jobs.train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=cli.arch_name, default=TrainConfig.arch)
    p.add_argument("--lr", type=cli.positive_float, default=RECIPE["lr"],
                   help="peak learning rate (warm-up, then cosine decay); the reports used a constant 1e-4")
    p.add_argument("--bce-weight", type=cli.non_negative_float, default=round(1 - RECIPE["dice_weight"], 6))
    p.add_argument("--dice-weight", type=cli.non_negative_float, default=RECIPE["dice_weight"])
    p.add_argument("--focal-weight", type=cli.non_negative_float, default=TrainConfig.focal_weight)
    p.add_argument("--name", default=None, help="sweep name the run is filed under (default train-<time>)")
    p.add_argument("--checkpoint", default=None, help="where to save the kept weights (default: none)")
    p.add_argument("--keep", choices=KEEP, default=TrainConfig.keep,
                   help="weights to evaluate and save: last (the end of the lr schedule, default) or best "
                        "(the epoch with the highest validation dice; worth it with a large validation split)")
    p.add_argument("--members", type=cli.positive_int, default=TrainConfig.members,
                   help="train an ensemble of this many networks side by side and evaluate their mean (default 1)")
    # a single run's own length (TrainConfig's 10 suits tests and library use); the rest the trainer's defaults
    cli.add_size_args(p, epochs=20, image=TrainConfig.image_size, width=TrainConfig.width, batch=TrainConfig.batch_size)
    cli.add_augment_args(p, None)
    cli.add_encoder_args(p)
    cli.add_data_args(p)
    cli.add_threads_arg(p)
    args = p.parse_args(argv)
    if args.bce_weight + args.dice_weight + args.focal_weight <= 0:
        p.error("at least one of --bce-weight, --dice-weight, --focal-weight must be > 0")
    cli.check_data_root(p, args)
    return args


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    weights = cli.encoder_weights(PROG, args.arch, args.encoder_weights)
    pretrained = weights != "none"  # the encoder knobs shape a pretrained encoder's training only
    return TrainConfig(arch=args.arch, width=args.width, members=args.members, image_size=args.image_size, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, bce_weight=args.bce_weight,
                       dice_weight=args.dice_weight, focal_weight=args.focal_weight,
                       augment=cli.augment_from_args(args), device=args.device, amp=args.amp,
                       compile=args.compile, seed=args.seed, keep=args.keep, encoder_weights=weights,
                       encoder_lr=args.encoder_lr if pretrained else 1.0,
                       freeze_epochs=args.freeze_epochs if pretrained else 0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = cli.apply_threads(args)
    cfg = config_from_args(args)
    name = args.name or f"train-{dt.datetime.now():%Y%m%d-%H%M%S}"
    store, data, image_ids = cli.open_job(PROG, args, cfg.image_size)
    print(f"{PROG}: {data.name} ({len(data.indices('train'))} train / {len(data.indices('val'))} val / "
          f"{len(data.indices('test'))} test images at {cfg.image_size} px) -> {display_url(store.url)}")
    print(f"{PROG}: {cli.describe(cfg.params())}; {threads}")
    try:
        with cli.one_line_errors(PROG, args.db, ValueError):
            outcome = run_trial(store, cfg, data, image_ids, sweep=name, study=f"{name}/{cfg.arch}", number=0,
                                checkpoint_path=Path(args.checkpoint) if args.checkpoint else None,
                                progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the run is recorded as failed, earlier results are untouched", file=sys.stderr)
        return 130
    print_summary(outcome, data, store)
    return 0 if outcome.state == "complete" else 1


def print_summary(outcome, data, store: Store) -> None:
    if outcome.state != "complete":
        print(f"{PROG}: trial {outcome.trial_id} {outcome.state}: {outcome.error}")
        return
    dice = outcome.dice
    worst = np.argsort(dice)[:3]
    names = [data.infos[data.indices("test")[i]].name for i in worst]
    print(f"{PROG}: trial {outcome.trial_id} complete in {outcome.seconds:.0f} s, {outcome.epochs_run} epochs; "
          f"val dice {outcome.val_dice:.4f}")
    s = spread(dice)
    print(f"{PROG}: test dice over {len(dice)} images: mean {s['mean']:.4f}  median {s['median']:.4f}  "
          f"p10 {s['p10']:.4f}  worst {', '.join(f'{n} {d:.3f}' for n, d in zip(names, dice[worst]))}")
    print(f"{PROG}: dashboard: {cli.dashboard_command(store.url)}")


if __name__ == "__main__":
    sys.exit(main())
