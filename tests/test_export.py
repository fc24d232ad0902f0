"""`python -m jobs.export`: ONNX Runtime and PyTorch agree on the shared samples' test images, the
TorchScript file runs without SegSweep, and the model card holds what the store says."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.sources import load_data
from core.metrics import spread
from core.store.db import Store
from jobs import export
from tests.test_predict import run_main, stored_masks, synthetic_root, trained

ORT_AGREEMENT = 0.999  # share of test pixels whose mask must agree


def evaluated_images(root: Path, image_size: int, data: str) -> tuple[list[str], np.ndarray]:
    """The dataset's test images as the trial evaluated them: names and float32 (N, 3, S, S) in 0-255."""
    prepared = load_data(data, root, image_size, log=lambda _: None)
    idx = prepared.indices("test")
    images = prepared.images[idx].transpose(0, 3, 1, 2).astype(np.float32)
    return [prepared.infos[i].name for i in idx], np.ascontiguousarray(images)


def export_main(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_main(argv, capsys, export.main)


@pytest.mark.parametrize("sample", ["oxford-pets-sample", "busi-sample"])
def test_onnx_runtime_and_pytorch_give_the_same_masks_on_the_samples_test_images(
        sample: str, request, tmp_path_factory, tmp_path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    pets = sample.startswith("oxford")
    root: Path = request.getfixturevalue("pets_root" if pets else "busi_root")
    data = "oxford-pets" if pets else "auto"
    db, row = trained(tmp_path_factory, "pets" if pets else "busi", "--data", data, "--data-root", str(root),
                      image_size=64, members=1, epochs=3)
    path = tmp_path / "model.onnx"
    code, out, err = export_main(["--db", db, "--format", "onnx", "--out", str(path)], capsys)
    assert code == 0, err
    names, images = evaluated_images(root, row["image_size"], data)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [given] = session.get_inputs()
    assert given.name == "images" and given.shape[1:] == [3, 64, 64]
    onnx_prob = np.concatenate([session.run(None, {"images": images[i:i + 16]})[0] for i in range(0, len(images), 16)])
    from core.training.result import load

    module = export.deployable(load(row, "cpu", warn=lambda _: None))
    with torch.no_grad():
        torch_prob = module(torch.from_numpy(images)).numpy()
    assert onnx_prob.shape == torch_prob.shape == (len(names), 1, 64, 64)
    agreement = float(((onnx_prob > 0.5) == (torch_prob > 0.5)).mean())
    max_diff = float(np.abs(onnx_prob - torch_prob).max())
    print(f"{sample}: {len(names)} test images, mask agreement {agreement:.6f}, max probability difference {max_diff:.2e}")
    assert agreement >= ORT_AGREEMENT and max_diff < 1e-3
    stored = stored_masks(db, row["id"])  # and the graph computes what the evaluation scored
    evaluated = np.stack([stored[n] for n in names])
    assert float(((torch_prob[:, 0] > 0.5) == evaluated).mean()) >= ORT_AGREEMENT


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, Path]:
    root = synthetic_root(tmp_path_factory)
    db, row = trained(tmp_path_factory, "synthetic", "--data", "synthetic", "--data-root", str(root), epochs=6)
    return db, row, root


def test_torchscript_runs_in_a_fresh_process_without_segsweep(synthetic, tmp_path, capsys) -> None:
    db, row, root = synthetic
    path = tmp_path / "model.pt"
    code, _, err = export_main(["--db", db, "--format", "torchscript", "--out", str(path)], capsys)
    assert code == 0, err
    _, images = evaluated_images(root, row["image_size"], "synthetic")
    np.save(tmp_path / "images.npy", images[:6])
    script = (
        "import importlib.util, sys\n"
        "import numpy as np, torch\n"
        "assert importlib.util.find_spec('core') is None and importlib.util.find_spec('jobs') is None, sys.path\n"
        "model = torch.jit.load('model.pt')\n"
        "np.save('probabilities.npy', model(torch.from_numpy(np.load('images.npy'))).detach().numpy())\n")
    # -S: no site-packages .pth files, so not SegSweep's editable install either; torch's folder named by hand
    site = str(Path(torch.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.append({site!r})\n" + script],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from core.training.result import load

    with torch.no_grad():
        expected = export.deployable(load(row, "cpu", warn=lambda _: None))(torch.from_numpy(images[:6])).numpy()
    got = np.load(tmp_path / "probabilities.npy")
    assert got.shape == (6, 1, row["image_size"], row["image_size"])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_model_card_says_what_the_store_says(synthetic, tmp_path, capsys) -> None:
    db, row, _ = synthetic
    path = tmp_path / "m.pt"
    code, out, _ = export_main(["--db", db, "--arch", "unet", "--format", "torchscript", "--out", str(path)], capsys)
    assert code == 0 and f"wrote {path}" in out
    card = json.loads(Path(f"{path}.json").read_text())
    store = Store(db, read_only=True)
    dice = spread(store.test_dice_of(row["id"]))
    assert card["arch"] == "unet" and card["image_size"] == 32 and card["threshold"] == 0.5
    assert card["width"] == 0.125 and card["members"] == 2 and card["inside_graph"]["flip_tta"] is True
    assert "squash" in card["size_rule"] and "nearest" in card["size_rule"]
    assert card["trial"]["number"] == row["number"] and card["sweep"] == "synthetic"
    assert card["dataset"]["name"] == row["dataset"] and card["dataset"]["layout"] == "synthetic"
    assert card["val_dice"]["mean"] == pytest.approx(row["val_dice"])
    assert card["test_dice"]["mean"] == pytest.approx(row["test_dice"])
    assert (card["test_dice"]["median"], card["test_dice"]["p10"]) == pytest.approx((dice["median"], dice["p10"]))
    assert card["training_seconds"] > 0 and card["training_device"] == row["device"] == "cpu"
    assert card["segsweep_version"] == "0.2.0" and card["checkpoint_sha256"] == row["checkpoint_sha256"]
    assert card["encoder_weights"] == "none" and card["encoder_sha256"] is None  # unet trains from random weights
    assert card["format"] == "torchscript" and len(card["file_sha256"]) == 64


@pytest.mark.parametrize("argv, fragment", [
    (["--trial", "7"], "has no trial 7"),
    (["--arch", "resnet34_unet"], "has no complete resnet34_unet trial"),
    (["--sweep", "other"], "no sweep 'other'"),
])
def test_bad_choices_are_one_line(synthetic, tmp_path, capsys, argv, fragment) -> None:
    code, _, err = export_main(["--db", synthetic[0], "--format", "onnx", "--out", str(tmp_path / "m.onnx"), *argv],
                               capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and fragment in err, err
