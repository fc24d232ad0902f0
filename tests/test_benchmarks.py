"""Smoke tests: every benchmark script runs end to end at tiny sizes and prints its ratio and verdict lines.

Nothing here is timed or compared with a target: on a shared machine only the benchmarks' own
interleaved ratios mean anything, and they need real sizes (see README, Performance).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from benchmarks import (
    dashboard_queries, data_pipeline, eval_diagnostics, gpu_throughput, store_writes, train_throughput,
)
from core.training.loop import select_amp

VERDICT = re.compile(r"^(PASS|MISS)  .+: .+ \(target (>=|<=) .+\)$", re.MULTILINE)


def test_train_throughput_compares_trainer_reference_and_model(pets_root: Path, capsys) -> None:
    code = train_throughput.main(["--archs", "unet", "--width", "0.125", "--image-size", "32", "--train-images", "16",
                                  "--rounds", "1", "--fwd-bwd-steps", "1", "--matmul-size", "128", "--ablations",
                                  "--ablation-steps", "1", "--data", str(pets_root)])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^RATIO unet trainer/reference = \d+\.\d+x", out, re.MULTILINE)
    assert re.search(r"^RATIO unet epochs-table images_per_s / timed outside fit = \d+\.\d+", out, re.MULTILINE)
    trainer_dtype = {None: "fp32", torch.bfloat16: "bfloat16"}[select_amp(torch.device("cpu"), "auto")]
    assert re.search(rf"^   trainer .* img/s .* \d+% of {trainer_dtype} matmul FLOP/s$", out, re.MULTILINE)
    assert re.search(r"^   reference .* img/s +\d+% of fp32 matmul FLOP/s$", out, re.MULTILINE)
    assert re.search(r"^   trainer, glibc malloc +\d+\.\d+ img/s +\(the trainer is x\d+\.\d+ this", out, re.MULTILINE)
    assert "-- ablation unet" in out and "channels_last" in out
    assert len(VERDICT.findall(out)) == 3


def test_data_pipeline_compares_cached_and_decoding(pets_root: Path, capsys) -> None:
    code = data_pipeline.main(["--images", "16", "--rounds", "1", "--image-size", "32", "--data", str(pets_root)])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^RATIO cached\+augmentation / decode-every-epoch = \d+\.\dx", out, re.MULTILINE)
    assert len(VERDICT.findall(out)) == 1


def test_store_writes_times_finish_trial_and_mask_size(pets_root: Path, capsys) -> None:
    code = store_writes.main(["--images", "40", "--mask-size", "64", "--rounds", "1", "--data", str(pets_root)])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^RATIO finish_trial before / now = \d+\.\dx", out, re.MULTILINE)
    assert "mean mask PNG" in out and len(VERDICT.findall(out)) == 2


def test_dashboard_queries_times_each_page_against_the_whole_table(tmp_path: Path, capsys) -> None:
    db = tmp_path / "big.db"
    argv = ["--results", "3000", "--images", "300", "--rounds", "1", "--keep", str(db)]
    assert dashboard_queries.main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote big.db through core.store.db" in out and "3,000 image_results rows" in out
    for view in ("hardest images, filtered", "... by failure mode", "... ranked by HD95", "+ the page's masks", "distributions page data", "hard for every model",
                 "... unfiltered"):
        assert re.search(rf"^   {re.escape(view)} +\d+\.\d ms  \([\d.,]+x faster than the whole table\)$", out, re.MULTILINE)
    assert len(VERDICT.findall(out)) == 4
    assert dashboard_queries.main(argv) == 0  # --keep reuses the store rather than writing it again
    assert "wrote" not in capsys.readouterr().out


def test_gpu_throughput_says_so_without_cuda(capsys) -> None:
    if torch.cuda.is_available():
        code = gpu_throughput.main(["--archs", "unet", "--width", "0.125", "--image-size", "64", "--batch-size", "2",
                                    "--steps", "1", "--rounds", "1", "--matmul-size", "256", "--no-compile"])
        assert code == 0 and len(VERDICT.findall(capsys.readouterr().out)) == 1
        return
    code = gpu_throughput.main([])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1 and out[0].startswith("SKIP gpu_throughput: no CUDA device")


def test_eval_diagnostics_compares_the_evaluation_with_and_without(pets_root: Path, capsys) -> None:
    code = eval_diagnostics.main(["--width", "0.125", "--image-size", "64", "--images", "4", "--batch-size", "4",
                                  "--rounds", "1", "--data", str(pets_root), "--report-only"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^RATIO \(predict \+ diagnostics on pet-shaped masks\) / predict = \d+\.\d+x", out, re.MULTILINE)
    for name in ("predict", "predict \\+ diagnostics", "diagnostics alone"):
        assert re.search(rf"^   {name} +\d+\.\d+ s  \( *\d+\.\d ms per image\)$", out, re.MULTILINE), name
    assert len(VERDICT.findall(out)) == 1
