"""The stored form of a predicted mask (the masks table's png column): a 1-bit PNG."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode_mask(mask: np.ndarray) -> bytes:
    """A binary mask as a 1-bit PNG: a few hundred bytes at 256 px for pet-shaped masks.

    Written directly (bit-packed rows, PNG filter "none", one zlib level-5 stream): for 1-bit
    masks that is faster than PIL's optimize=True and smaller too (PIL's per-row filters suit
    photos, not bitmaps; benchmarks/store_writes.py compares them). Any PNG reader decodes it.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a mask must be a non-empty 2-D array, got shape {mask.shape}")
    height, width = mask.shape
    raw = np.zeros((height, 1 + (width + 7) // 8), np.uint8)  # per row: filter byte 0, then the bits
    # MSB first, each row padded to whole bytes, as PNG wants; packing the flat array is faster
    # than along axis 1 and gives the same bytes when rows are whole bytes already
    raw[:, 1:] = np.packbits(mask.reshape(-1)).reshape(height, -1) if width % 8 == 0 else np.packbits(mask, axis=1)
    raw = raw.tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 5))
            + chunk(b"IEND", b""))


def decode_mask(png: bytes) -> np.ndarray:
    """Inverse of encode_mask: (S, S) bool."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("1"), dtype=bool)
