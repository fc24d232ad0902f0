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


def test_pet_and_border_are_pet_in_arrays_and_tensors() -> None:
    trimap = np.array([[1, 2], [3, 2]], dtype=np.uint8)
    assert layout.pet_mask(trimap).tolist() == [[True, False], [True, False]]
    assert layout.pet_mask(torch.from_numpy(trimap)).tolist() == [[True, False], [True, False]]


def test_the_synthetic_set_is_written_in_the_layout_the_loader_reads(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "syn", n_images=8, image_size=32, seed=0)
    names = [line.split()[0] for line in (root / layout.TRAINVAL_LIST).read_text().splitlines()]
    names += [line.split()[0] for line in (root / layout.TEST_LIST).read_text().splitlines()]
    assert len(names) == 8 and looks_complete(root) and (root / layout.ALL_LIST).is_file()
    for name in names:
        assert layout.image_path(root, name).is_file()
        assert set(np.unique(np.asarray(Image.open(layout.trimap_path(root, name))))) \
            <= set(layout.TRIMAP_VALUES)
