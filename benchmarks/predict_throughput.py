"""Images/s of jobs.predict on a folder of 256-px images against the bare forward pass, same process.

    .venv/bin/python benchmarks/predict_throughput.py
    .venv/bin/python benchmarks/predict_throughput.py --arch resnet34_unet --members 1 --width 0.5

The model is a quick sweep's usual CPU result (default: unet, width 0.25, an ensemble of 2, 64 px,
flip TTA), stored as a complete trial with its checkpoint; its weights are untrained, which costs
the same. The folder holds synthetic-set JPEGs at 256 px. Variants take turns, one pass each:

* jobs.predict   `jobs.predict.run` on the folder: decoding and squashing on its thread pool, the
                 forward pass, each mask brought back to 256 px and written as PNG, its CSV row.
                 (The job's start-up, the store read and the checkpoint's sha256, is timed apart.)
* forward        the same batches, decoded beforehand and held in memory, through the same forward
                 (`Result.logits`: the loop's normalisation, flip TTA, the members' mean), in the
                 same precision and layout: what the model costs whatever the files.

Target: jobs.predict / forward >= 0.8, i.e. reading and writing files do not dominate.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._common import finish, header, interleave, median, paired_ratio, parser, positive_int, set_threads, verdict

TARGET = 0.8
FOLDER_SIZE = 256  # px, the images read


def lscpu_model() -> str:
    """lscpu's "Model name", or '' where lscpu is absent."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "")


def stored_result(db: str, folder: Path, arch: str, width: float, members: int, image_size: int) -> None:
    """A store holding one complete trial of an untrained model, with its checkpoint and sha256."""
    from core.models import build_model
    from core.models.pretrained import file_sha256
    from core.store.db import Store
    from core.training.loop import TrainConfig, save_checkpoint

    cfg = TrainConfig(arch=arch, width=width, members=members, image_size=image_size)
    store = Store(db)
    trial = store.start_trial(sweep="bench", study=f"bench/{arch}", arch=arch, number=0, params=cfg.params(),
                              device="cpu", dataset="bench", image_size=image_size)
    path = folder / "trial-0.pt"
    save_checkpoint(path, build_model(arch, width=width, members=members), cfg, trial_id=trial)
    store.finish_trial(trial, state="complete", val_dice=0.5, checkpoint=str(path), checkpoint_sha256=file_sha256(path))
    store.dispose()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/predict_throughput.py")
    p.add_argument("--arch", default="unet")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--members", type=positive_int, default=2)
    p.add_argument("--image-size", type=positive_int, default=64, help="the model's trained size")
    p.add_argument("--images", type=positive_int, default=192, help=f"images in the folder ({FOLDER_SIZE} px)")
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = p.parse_args(argv)

    set_threads(args.threads)
    import torch

    from core.data.synthetic import generate_synthetic
    from core.store.db import Store
    from core.training.loop import evaluation_batch
    from core.training.result import choose, describe, load
    from jobs import predict

    header("jobs.predict: images/s against the bare forward pass", args)
    print(f"   CPU (lscpu): {lscpu_model() or 'lscpu not available'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = generate_synthetic(tmp_path / "synthetic", n_images=args.images, image_size=FOLDER_SIZE, seed=0)
        db = str(tmp_path / "bench.db")
        stored_result(db, tmp_path, args.arch, args.width, args.members, args.image_size)

        started = time.perf_counter()
        store = Store(db, read_only=True)
        row, chosen = choose(store, "bench", args.arch)
        store.dispose()
        result = load(row, "cpu", chosen, warn=lambda _: None)
        items = predict.folder_items(root / "images", tmp_path / "out")
        start_s = time.perf_counter() - started
        batch_size = evaluation_batch(result.cfg)
        print(f"   {describe(result)} in {result.precision}; {len(items)} images of {FOLDER_SIZE} px, batches of "
              f"{batch_size}; start-up (store, sha256, model) {start_s:.2f} s")

        out = tmp_path / "out"
        with ThreadPoolExecutor() as pool:
            held = [torch.from_numpy(images) for _, images, _ in
                    predict.batches(items, result.cfg.image_size, batch_size, pool, [])]
        result.logits(held[0])  # warm-up: the first call builds the kernels

        def job() -> float:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            started = time.perf_counter()
            rows, skipped = predict.run(result, items, out, batch_size=batch_size, probabilities=False, progress=False)
            assert len(rows) == len(items) and not skipped
            return len(rows) / (time.perf_counter() - started)

        def forward() -> float:
            started = time.perf_counter()
            for images in held:
                result.logits(images).cpu()
            return sum(len(b) for b in held) / (time.perf_counter() - started)

        results = interleave({"jobs.predict": job, "forward": forward}, args.rounds)
    print(f"-- images/s, median of {args.rounds} interleaved passes:")
    for name, values in results.items():
        print(f"   {name:<14} {median(values):8.1f} images/s")
    ratio = paired_ratio(results["jobs.predict"], results["forward"])
    print(f"RATIO jobs.predict / forward = {ratio:.2f}")
    return finish([verdict("jobs.predict keeps up with the forward pass", ratio, TARGET)], args.report_only)


if __name__ == "__main__":
    sys.exit(main())
