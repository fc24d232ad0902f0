"""core/data/layout.py: the dataset's file layout and trimap values, in one place."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.data import layout
from core.data.download import looks_complete
from core.data.synthetic import generate_synthetic


def test_paths_follow_the_official_layout(tmp_path: Path) -> None:
    assert layout.image_rel("Abyssinian_1") == "images/Abyssinian_1.jpg"
    assert layout.trimap_rel("Abyssinian_1") == "annotations/trimaps/Abyssinian_1.png"
    assert layout.SPLIT_LISTS == ("annotations/trainval.txt", "annotations/test.txt")
    assert layout.trimap_path(tmp_path, "a") == tmp_path / "annotations" / "trimaps" / "a.png"


def test_a_trimap_is_foreground_pet_or_border_and_ignore_border_in_arrays_and_tensors() -> None:
    trimap = np.array([[1, 2], [3, 2]], dtype=np.uint8)
    assert layout.trimap_foreground(trimap).tolist() == [[True, False], [True, False]]
    foreground, ignore = layout.trimap_truth(torch.from_numpy(trimap))
    assert foreground.tolist() == [[True, False], [True, False]] and ignore.tolist() == [[False, False], [True, False]]


def test_breeds_and_the_ignore_band_come_with_the_layouts_sources() -> None:
    for source in ("oxford-pets", "synthetic", None):
        assert layout.has_breeds(source) and layout.has_ignore_band(source)
    assert not layout.has_breeds("folder") and not layout.has_ignore_band("folder")


def test_the_synthetic_set_is_written_in_the_layout_the_loader_reads(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "syn", n_images=8, image_size=32, seed=0)
    names = [line.split()[0] for line in (root / layout.TRAINVAL_LIST).read_text().splitlines()]
    names += [line.split()[0] for line in (root / layout.TEST_LIST).read_text().splitlines()]
    assert len(names) == 8 and looks_complete(root) and (root / layout.ALL_LIST).is_file()
    for name in names:
        assert layout.image_path(root, name).is_file()
        assert set(np.unique(np.asarray(Image.open(layout.trimap_path(root, name))))) \
            <= set(layout.TRIMAP_VALUES)
