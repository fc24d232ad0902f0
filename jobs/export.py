"""`python -m jobs.export`: a sweep's result as one ONNX or TorchScript file, with its model card.

The graph takes float32 RGB images in 0-255, shaped (N, 3, S, S) at the trained size S, and returns
foreground probabilities (N, 1, S, S): the training loop's normalisation, the trial's flip TTA and
its ensemble members' mean are inside it (core.training.loop.evaluation_logits), computed in
float32. Foreground is a probability above the card's threshold. Bringing an image to S x S (and the
prediction back) is the card's size rule, the one jobs.predict applies.

FILE.json beside FILE is the model card: what the model is (architecture, width, size, threshold,
size rule), where it came from (trial, sweep, dataset and its layout, training seconds and
device, SegSweep version, the checkpoint's sha256) and how good it was (validation dice; test
dice mean, median and p10 over the store's per-image rows).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.data.dataset import DataError
from core.metrics import THRESHOLD, spread
from core.models.pretrained import file_sha256
from core.store import queries, selection
from core.store.db import Store
from core.training.loop import MEAN, STD, Normalizer, evaluation_logits
from core.training.result import Result, ResultError, choose, describe, load, reading
from jobs import cli

PROG = "jobs.export"
FORMATS = ("onnx", "torchscript")
SIZE_RULE = ("squash the whole image to image_size x image_size (bilinear, antialiased; no crop, no padding); "
             "bring the prediction back to the image's own width x height by nearest neighbour")
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class Deployable(nn.Module):
    """float32 RGB 0-255, (N, 3, S, S) -> foreground probabilities (N, 1, S, S), as the trial was evaluated."""

    def __init__(self, model: nn.Module, flip_tta: bool):
        super().__init__()
        normalize = Normalizer(torch.device("cpu"), channels_last=False)  # the loop's own constants
        self.model, self.flip_tta = model, flip_tta
        self.register_buffer("mean", normalize.mean)
        self.register_buffer("inv_std", normalize.inv_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(evaluation_logits(self.model, (images - self.mean) * self.inv_std, self.flip_tta))


def deployable(result: Result) -> Deployable:
    """The result's model on the CPU in float32 NCHW, wrapped with its preprocessing and TTA."""
    model = result.model.to("cpu", dtype=torch.float32, memory_format=torch.contiguous_format).eval()
    return Deployable(model, result.cfg.flip_tta).eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    cli.add_result_args(p)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, help="the model file to write; its card goes to FILE.json")
    return p.parse_args(argv)


def export(module: Deployable, image_size: int, fmt: str, path: Path) -> None:
    """Write `module` as ONNX (batch size free) or TorchScript (traced) to `path`."""
    example = torch.rand(2, 3, image_size, image_size) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporters' chatter
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example), str(path))
            return
        torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          verbose=False)


def card(result: Result, store: Store, fmt: str, path: Path) -> dict[str, Any]:
    """The model card: what the model is, where it came from, how good it was."""
    row, cfg = result.row, result.cfg
    kind = queries.dataset_kinds(store).get(row["dataset"], {})
    dice = store.test_dice_of(int(row["id"]))
    test = spread(dice) if len(dice) else {}
    curves = queries.epoch_curves(store, [int(row["id"])])
    try:
        version = importlib.metadata.version("segsweep")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "arch": cfg.arch, "width": cfg.width, "members": cfg.members, "image_size": cfg.image_size,
        "threshold": THRESHOLD, "size_rule": SIZE_RULE,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", 3, cfg.image_size, cfg.image_size],
                  "range": [0, 255], "channels": "RGB"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", 1, cfg.image_size, cfg.image_size],
                   "meaning": "foreground probability; foreground where above threshold"},
        "inside_graph": {"normalisation": {"mean": [round(m * 255, 6) for m in MEAN],
                                           "std": [round(s * 255, 6) for s in STD]},
                         "flip_tta": cfg.flip_tta, "members_averaged": cfg.members},
        "format": fmt, "file": path.name, "file_sha256": file_sha256(path),
        "trial": {"id": int(row["id"]), "number": int(row["number"]), "study": row["study"],
                  "chosen_as": selection.chosen_as(row["params"]), "params": row["params"]},
        "sweep": row["sweep"],
        "dataset": {"name": row["dataset"], "source": kind.get("source"), "layout": kind.get("layout"),
                    "root": kind.get("root")},
        "val_dice": {"mean": row["val_dice"]},  # per-image rows are kept for test images only
        "test_dice": {"mean": test.get("mean"), "median": test.get("median"), "p10": test.get("p10"),
                      "images": len(dice)},
        "training_seconds": float(curves["seconds"].sum()) if not curves.empty else None,
        "epochs": int(row["epochs_run"]), "training_device": row["device"],
        "segsweep_version": version, "checkpoint_sha256": result.sha256,
        # where the encoder's training started (trials.encoder_weights: none, imagenet:FILE, file:PATH)
        "encoder_weights": row.get("encoder_weights"), "encoder_sha256": row.get("encoder_sha256"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).expanduser()
    say = lambda msg: print(f"{PROG}: {msg}", file=sys.stderr)  # noqa: E731
    try:
        if out.is_dir():
            raise ResultError(f"--out {out} is a folder; give the model file's name, e.g. {out / 'model.onnx'}")
        with reading(args.db) as store:
            row, chosen = choose(store, args.sweep, args.arch, args.trial)
            result = load(row, "cpu", chosen, warn=say)
            print(f"{PROG}: {describe(result)}: {chosen}")
            try:
                export(deployable(result), result.cfg.image_size, args.format, out)
            except ImportError as exc:
                raise ResultError(f"ONNX export needs the onnx and onnxscript packages ({exc.name} is missing): "
                                  f"pip install onnx onnxscript") from None
            model_card = card(result, store, args.format, out)
        card_path = Path(f"{out}.json")
        card_path.write_text(json.dumps(model_card, indent=2, default=str) + "\n")
    except (ResultError, DataError) as exc:
        cli.user_error(PROG, str(exc), code=2)
    except OSError as exc:
        cli.user_error(PROG, f"cannot write {exc.filename or out}: {exc.strerror or exc}", code=2)
    print(f"{PROG}: wrote {out} ({args.format}) and its card {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
