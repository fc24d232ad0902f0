"""The benchmarks' verdicts and exit status: PASS/MISS lines, exit 1 on a MISS, --report-only.

No real training and no timing: targets are set out of reach (or trivially met) through each
script's own constants, and train_throughput's measurements are replaced by fixed numbers, so
what is checked is the verdict logic and its wiring, not this machine's speed. The cheap
scripts (store writes, dashboard queries, data pipeline) still run end to end at tiny sizes.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import (
    _common,
    dashboard_queries,
    data_pipeline,
    eval_diagnostics,
    gpu_throughput,
    label_errors,
    store_writes,
    train_throughput,
)

VERDICT = re.compile(r"^(PASS|MISS)  .+: .+ \(target (>=|<=) .+\)$", re.MULTILINE)


# -- verdict() and finish() ------------------------------------------------------------------

@pytest.mark.parametrize("value, target, unit, higher, line", [
    (2.11, 2.0, "x", True, "PASS  speed-up: 2.11x (target >= 2x)"),
    (1.6, 2.0, "x", True, "MISS  speed-up: 1.6x (target >= 2x; short by a factor 1.25)"),
    (0.73, 0.60, "%", True, "PASS  speed-up: 73.0% (target >= 60.0%)"),
    (0.30, 0.60, "%", True, "MISS  speed-up: 30.0% (target >= 60.0%; short by a factor 2.00)"),
    (4.0, 100.0, " ms", False, "PASS  speed-up: 4 ms (target <= 100 ms)"),
    (150.0, 100.0, " ms", False, "MISS  speed-up: 150 ms (target <= 100 ms; short by a factor 1.50)"),
    (2.0, 2.0, "x", True, "PASS  speed-up: 2x (target >= 2x)"),  # exactly on target passes
    (0.0, 2.0, "x", True, "MISS  speed-up: 0x (target >= 2x; short by a factor inf)"),
])
def test_verdict_prints_one_line_and_says_by_how_much_a_target_was_missed(
        value: float, target: float, unit: str, higher: bool, line: str, capsys) -> None:
    ok = _common.verdict("speed-up", value, target, unit=unit, higher_is_better=higher)
    out = capsys.readouterr().out
    assert out == line + "\n"
    assert ok is line.startswith("PASS")
    assert VERDICT.fullmatch(line)


def test_finish_exits_0_when_every_target_is_met(capsys) -> None:
    assert _common.finish([True, True, True], report_only=False) == 0
    assert capsys.readouterr().out == "done: all 3 targets met\n"


def test_finish_exits_1_on_any_miss(capsys) -> None:
    assert _common.finish([True, False, False], report_only=False) == _common.EXIT_MISS == 1
    assert capsys.readouterr().out == "done: 2 of 3 targets missed (see MISS lines)\n"


def test_finish_with_report_only_reports_the_miss_and_exits_0(capsys) -> None:
    assert _common.finish([False, True], report_only=True) == 0
    assert capsys.readouterr().out == "done: 1 of 2 targets missed (see MISS lines); exit 0 (--report-only)\n"


def test_every_benchmark_takes_report_only_and_rejects_a_bad_flag_in_one_line(capsys) -> None:
    p = _common.parser("What it measures.\n\nDetails.", "benchmarks/x.py")
    assert p.parse_args([]).report_only is False and p.parse_args(["--report-only"]).report_only is True
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--report-onyl"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == "benchmarks/x.py: error: unrecognized arguments: --report-onyl\n"
    for script in (dashboard_queries, data_pipeline, gpu_throughput, label_errors, store_writes, train_throughput):
        with pytest.raises(SystemExit) as info:
            script.main(["--help"])
        assert info.value.code == 0 and "--report-only" in capsys.readouterr().out, script.__name__


# -- each script: exit status follows its verdicts ---------------------------------------------

def run(main, argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


def test_store_writes_exits_1_on_a_miss_and_0_with_report_only(pets_root: Path, monkeypatch, capsys) -> None:
    argv = ["--images", "40", "--mask-size", "64", "--rounds", "1", "--prior-trials", "3", "--data", str(pets_root)]
    monkeypatch.setattr(store_writes, "TIME_TARGET_S", math.inf)
    code, out = run(store_writes.main, argv, capsys)
    assert code == 0 and re.search(r"^RATIO finish_trial before / now = \d+\.\dx", out, re.MULTILINE)
    assert re.search(r"^RATIO finish_trial / without the summary = \d+\.\d\dx", out, re.MULTILINE)
    assert "into a sweep of 3 complete trials" in out
    upkeep = re.search(r"^   summary upkeep inside finish_trial: \d+ ms median, \d+ ms at most over (\d+) closes; "
                       r"\d+ of (\d+) image summaries recomputed", out, re.MULTILINE)
    assert upkeep and int(upkeep[1]) == 3 and int(upkeep[2]) == 3 * 40  # finish_trial, before, no masks
    assert [m[0] for m in VERDICT.findall(out)] == ["PASS", "PASS"] and out.endswith("done: all 2 targets met\n")

    monkeypatch.setattr(store_writes, "BYTES_TARGET", 1)  # no PNG is one byte
    code, out = run(store_writes.main, argv, capsys)
    assert code == 1 and [m[0] for m in VERDICT.findall(out)] == ["PASS", "MISS"]
    assert re.search(r"^MISS  mean mask size at 64 px: \d+ B \(target <= 1 B; short by a factor \d+", out, re.MULTILINE)
    code, out = run(store_writes.main, [*argv, "--report-only"], capsys)
    assert code == 0 and out.endswith("done: 1 of 2 targets missed (see MISS lines); exit 0 (--report-only)\n")


def test_dashboard_queries_exits_1_when_a_page_misses_its_time(tmp_path: Path, monkeypatch, capsys) -> None:
    db = tmp_path / "big.db"
    argv = ["--results", "3000", "--images", "300", "--rounds", "1", "--keep", str(db)]
    for target in ("HARDEST_TARGET_S", "DISTRIBUTIONS_TARGET_S", "EVERY_MODEL_TARGET_S", "EVERY_MODEL_MODE_TARGET_S"):
        monkeypatch.setattr(dashboard_queries, target, math.inf)
    code, out = run(dashboard_queries.main, argv, capsys)
    assert code == 0 and "wrote big.db through core.store.db" in out and "3,000 image_results rows" in out
    assert re.search(r"^   summary upkeep in finish_trial: [\d.]+ s over 10 closes;", out, re.MULTILINE)
    for view in ("hardest images, filtered", "... by failure mode", "... ranked by HD95", "+ the page's masks",
                 "distributions page data", "hard for every model", "... unfiltered", "... by most common mode",
                 "... filtered, every result", "... unfiltered, every result", "... by most common mode, every result"):
        assert re.search(rf"^   {re.escape(view)} +\d+\.\d ms  \([\d.,]+x faster than the whole table\)$", out, re.MULTILINE)
    assert "summaries and every result rank the same images with the same medians: yes" in out

    monkeypatch.setattr(dashboard_queries, "DISTRIBUTIONS_TARGET_S", 0.0)
    code, out = run(dashboard_queries.main, argv, capsys)  # --keep: the store is reused, not written again
    assert code == 1 and "wrote" not in out
    assert [m[0] for m in VERDICT.findall(out)] == ["PASS", "PASS", "PASS", "MISS", "PASS", "PASS", "PASS"]
    assert run(dashboard_queries.main, [*argv, "--report-only"], capsys)[0] == 0


def test_data_pipeline_exits_1_when_caching_does_not_pay(pets_root: Path, monkeypatch, capsys) -> None:
    argv = ["--images", "16", "--rounds", "1", "--image-size", "32", "--data", str(pets_root)]
    monkeypatch.setattr(data_pipeline, "CACHE_TARGET", math.inf)
    code, out = run(data_pipeline.main, argv, capsys)
    assert code == 1 and re.search(r"^RATIO cached\+augmentation / decode-every-epoch = \d+\.\dx", out, re.MULTILINE)
    assert [m[0] for m in VERDICT.findall(out)] == ["MISS"]
    assert run(data_pipeline.main, [*argv, "--report-only"], capsys)[0] == 0


def test_label_errors_rescore_needs_the_kept_sweeps_folder(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        label_errors.main(["--rescore"])
    assert info.value.code == 2 and "--rescore needs --keep DIR" in capsys.readouterr().err


def test_a_missing_dataset_exits_2_not_1(tmp_path: Path, capsys) -> None:
    code, out = run(data_pipeline.main, ["--data", str(tmp_path / "none"), "--report-only"], capsys)
    assert code == 2 and f"error: no dataset at {tmp_path / 'none'}" in out


class FakeProcess:
    """FreshProcess without the process: the reference 'runs' at a fixed 50 images/s."""

    def __init__(self, threads: int = 0):
        pass

    def call(self, fn, *args) -> float:
        return 50.0

    def __enter__(self) -> "FakeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def fake_trainer_run(cfg, data, record: dict, opencv_fix: bool = True) -> float:
    """fit() replaced: 100 images/s, in the epochs table and timed outside alike."""
    record.setdefault("table", []).append(100.0)
    record.setdefault("outside", []).append(100.0)
    return 100.0


@pytest.fixture
def fake_training(monkeypatch) -> None:
    monkeypatch.setattr(train_throughput, "trainer_run", fake_trainer_run)
    monkeypatch.setattr(train_throughput, "FreshProcess", FakeProcess)
    monkeypatch.setattr(train_throughput, "matmul_flops", lambda *a, **k: 1e12)
    monkeypatch.setattr(train_throughput, "seconds_per_step", lambda *a, **k: 0.1)
    monkeypatch.setattr(train_throughput, "FLOP_TARGET", 0.0)


def test_train_throughput_judges_trainer_over_reference_without_training(
        pets_root: Path, fake_training: None, monkeypatch, capsys) -> None:
    argv = ["--archs", "unet", "--width", "0.125", "--image-size", "32", "--train-images", "16", "--rounds", "2",
            "--data", str(pets_root)]
    code, out = run(train_throughput.main, argv, capsys)
    assert code == 0, out
    assert "RATIO unet trainer/reference = 2.00x   (ceiling fwd+bwd/reference = 1.60x)" in out  # 8 img / 0.1 s
    assert "RATIO unet epochs-table images_per_s / timed outside fit = 1.000" in out
    assert [m[0] for m in VERDICT.findall(out)] == ["PASS", "PASS", "PASS"]

    monkeypatch.setitem(train_throughput.TARGETS, "unet", 3.0)
    code, out = run(train_throughput.main, argv, capsys)
    assert code == 1
    assert "MISS  unet trainer/reference speed-up: 2x (target >= 3x; short by a factor 1.50)" in out
    assert re.search(r"^      why: 3.0x the reference needs \d+% of \w+ matmul FLOP/s", out, re.MULTILINE)
    code, out = run(train_throughput.main, [*argv, "--report-only"], capsys)
    assert code == 0 and out.endswith("done: 1 of 3 targets missed (see MISS lines); exit 0 (--report-only)\n")


def test_gpu_throughput_skips_with_exit_0_without_cuda(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: run benchmarks/gpu_throughput.py itself")
    code, out = run(gpu_throughput.main, [], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 1 and lines[0].startswith("SKIP gpu_throughput: no CUDA device")


# -- quality.py: the sweep's model against the reports' loop -----------------------------------

def test_the_all_foreground_floor_is_the_dice_of_calling_every_pixel_foreground() -> None:
    from benchmarks.quality import all_foreground_dice

    half = np.zeros((1, 4, 4), bool)
    half[0, :2] = True  # 8 of 16 pixels foreground: dice = 2 * 8 / (8 + 16)
    full = np.ones((1, 4, 4), bool)
    assert all_foreground_dice(np.concatenate([half, full])) == pytest.approx((2 * 8 / 24 + 1.0) / 2)


@pytest.mark.parametrize("sweep_dice, report_only, code, word", [
    (0.80, False, 0, "PASS"), (0.79, False, 1, "MISS"), (0.79, True, 0, "MISS")])
def test_quality_passes_only_when_the_sweep_gains_the_target_over_the_reference(
        monkeypatch, pets_root: Path, capsys, sweep_dice: float, report_only: bool, code: int, word: str) -> None:
    from benchmarks import quality
    from benchmarks.reference_loop import ReferenceResult

    class InProcess:  # the reference's fresh process, without training: a fixed result
        def __init__(self, *a): ...
        def __enter__(self): return self
        def __exit__(self, *exc): ...
        def call(self, fn, *args): return ReferenceResult(0.765, np.zeros(60), 0.75, 9, 40, 300.0)

    monkeypatch.setattr(quality, "FreshProcess", InProcess)
    monkeypatch.setattr(quality, "sweep", lambda *a: dict(
        test_dice=sweep_dice, val_dice=0.8, number=20, epochs_run=119, refit=True, configs=20, trials=21,
        epochs=245, trial_seconds=276.0, wall=279.0, lines=[], chose="trial 2: lr 0.003, dice weight 0.70"))
    argv = ["--data", str(pets_root), "--archs", "unet", *(["--report-only"] if report_only else [])]
    assert quality.main(argv) == code
    out = capsys.readouterr().out
    assert f"{word}  unet: sweep - reference test dice {sweep_dice - 0.765:+.4f} (target >= +0.0300)" in out
    assert "reference  test dice 0.7650" in out and "trial 20 = the refit, 119 epochs" in out
    assert "configuration of trial 2: lr 0.003, dice weight 0.70" in out
    assert "all-foreground floor 0.5717" in out


def test_quality_repeats_judge_the_mean_difference_over_seeds(monkeypatch, pets_root: Path, capsys) -> None:
    from benchmarks import quality
    from benchmarks.reference_loop import ReferenceResult

    seeds = {"reference": [], "sweep": []}

    class InProcess:
        def __init__(self, *a): ...
        def __enter__(self): return self
        def __exit__(self, *exc): ...
        def call(self, fn, *args):
            seeds["reference"].append(args[-1])
            return ReferenceResult(0.765, np.zeros(60), 0.75, 9, 40, 300.0)

    dice = iter([0.80, 0.78])  # +0.035 and +0.015: one run alone would PASS, their mean misses

    def sweep(arch, root, seconds, size, db, name, extra):
        seeds["sweep"].append(extra[extra.index("--seed") + 1])
        return dict(test_dice=next(dice), val_dice=0.8, number=20, epochs_run=119, refit=True, configs=20,
                    trials=21, epochs=245, trial_seconds=276.0, wall=279.0, lines=[], chose="trial 1: lr 0.001, dice weight 0.70")

    monkeypatch.setattr(quality, "FreshProcess", InProcess)
    monkeypatch.setattr(quality, "sweep", sweep)
    assert quality.main(["--data", str(pets_root), "--archs", "unet", "--repeats", "2"]) == 1
    out = capsys.readouterr().out
    assert seeds == {"reference": [0, 1], "sweep": ["0", "1"]}
    assert "unet, seed 1" in out and "difference +0.0350" in out and "difference +0.0150" in out
    assert "MISS  unet: sweep - reference test dice +0.0250 (target >= +0.0300; mean of 2 seeds)" in out


@pytest.mark.parametrize("lite0, word", [(0.80, "PASS"), (0.78, "MISS")])
def test_quality_judges_the_pretrained_architectures_lead_over_the_best_from_scratch_one(
        monkeypatch, pets_root: Path, capsys, lite0: float, word: str) -> None:
    from benchmarks import quality
    from benchmarks.reference_loop import ReferenceResult

    class InProcess:
        def __init__(self, *a): ...
        def __enter__(self): return self
        def __exit__(self, *exc): ...
        def call(self, fn, *args): return ReferenceResult(0.70, np.zeros(60), 0.7, 9, 40, 300.0)

    dice = {"unet": 0.74, "resnet34_unet": 0.75, "efficientnet_lite0_unet": lite0}
    monkeypatch.setattr(quality, "FreshProcess", InProcess)
    monkeypatch.setattr(quality, "sweep", lambda arch, *a: dict(
        test_dice=dice[arch], val_dice=0.8, number=20, epochs_run=119, refit=True, configs=20, trials=21,
        epochs=245, trial_seconds=276.0, wall=279.0, lines=[], chose="trial 2"))
    code = quality.main(["--data", str(pets_root), "--pretrained-target", "0.04"])
    out = capsys.readouterr().out
    assert code == (0 if word == "PASS" else 1)
    assert (f"{word}  pretrained lead: efficientnet_lite0_unet {lite0:.4f} - resnet34_unet 0.7500 = "
            f"{lite0 - 0.75:+.4f} test dice (target >= +0.0400)") in out


def test_quality_refuses_a_folder_that_is_not_a_dataset_in_one_line(tmp_path: Path, capsys) -> None:
    from benchmarks import quality

    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit) as info:
        quality.main(["--data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and err.startswith(f"quality.py: error: --data {tmp_path}: ")


def test_the_reports_loop_reads_a_users_folder_and_scores_every_test_image(busi_root: Path) -> None:
    """quality.py on any folder the jobs take: the reference decodes the folder's own files per sample."""
    from benchmarks.quality import load
    from benchmarks.reference_loop import FolderFiles, sample_reader, train_for

    data = load(busi_root, 32)
    names = {s: [data.infos[i].name for i in data.indices(s)] for s in ("train", "val", "test")}
    read = sample_reader(busi_root)
    assert isinstance(read, FolderFiles)
    image, mask = read("benign/benign (25)")  # two mask files, united
    assert image.ndim == 3 and image.shape[:2] == mask.shape and set(np.unique(mask)) == {0, 1}
    result = train_for("unet", busi_root, 0.01, 32, names["train"][:8], names["val"][:4],
                       data.masks[data.indices("val")][:4], names["test"], data.masks[data.indices("test")],
                       width=0.125)
    assert result.epochs == 1 and result.test_scores.shape == (len(names["test"]),) == (42,)
    assert 0.0 <= result.test_dice <= 1.0


def test_eval_diagnostics_judges_the_evaluations_cost_with_diagnostics_and_exits_1_on_a_miss(
        pets_root: Path, monkeypatch, capsys) -> None:
    argv = ["--width", "0.125", "--image-size", "64", "--images", "4", "--batch-size", "4", "--rounds", "1",
            "--data", str(pets_root)]
    monkeypatch.setattr(eval_diagnostics, "TARGET", math.inf)
    code, out = run(eval_diagnostics.main, argv, capsys)
    assert code == 0 and out.endswith("done: all 1 targets met\n")
    ratio = re.search(r"^RATIO \(predict \+ diagnostics on pet-shaped masks\) / predict = (\d+\.\d+)x", out, re.MULTILINE)
    assert ratio and float(ratio[1]) > 1.0  # predict's time plus the diagnostics' own: never below predict alone
    for name in ("predict", "predict \\+ diagnostics", "diagnostics alone"):
        assert re.search(rf"^   {name} +\d+\.\d+ s  \( *\d+\.\d ms per image\)$", out, re.MULTILINE), name
    assert [m[0] for m in VERDICT.findall(out)] == ["PASS"]

    monkeypatch.setattr(eval_diagnostics, "TARGET", 1.0)  # diagnostics may add nothing at all: a miss
    code, out = run(eval_diagnostics.main, argv, capsys)
    assert code == 1 and [m[0] for m in VERDICT.findall(out)] == ["MISS"]
    assert re.search(r"^MISS  test evaluation with diagnostics at 64 px, relative to without: [\d.]+x "
                     r"\(target <= 1x; short by a factor [\d.]+\)$", out, re.MULTILINE), out
