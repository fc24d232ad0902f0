"""The stored form of a predicted mask (the masks table's png column): a 1-bit PNG; and of an image as scored
(truth_masks.image): an 8-bit PNG."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode_mask(mask: np.ndarray) -> bytes:
    """A binary mask as a 1-bit PNG: a few hundred bytes at 256 px for object-shaped masks.

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


_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_OWN_HEADER = struct.Struct(">IIBBBBB")  # IHDR: width, height, bit depth, colour type, compression, filter, interlace


def decode_mask(png: bytes, step: int = 1) -> np.ndarray:
    """Inverse of encode_mask: (H, W) bool; with `step`, only every step-th pixel of every step-th row
    (mask[::step, ::step], as core.labels.on_grid takes them for the votes), the other rows left packed.

    encode_mask's own layout (1-bit grayscale, no interlace, every row filter "none") is unpacked directly,
    about 5x faster than through PIL (10x on the grid), which matters where every test image's truth is read at
    each close (core.store.suspicion). Any other PNG (PIL's filtered rows, another bit depth) goes through PIL."""
    own = _decode_own(bytes(png), step)
    if own is not None:
        return own
    return np.asarray(Image.open(io.BytesIO(png)).convert("1"), dtype=bool)[::step, ::step]


def _decode_own(png: bytes, step: int = 1) -> np.ndarray | None:
    """The mask of a PNG in encode_mask's layout, every step-th pixel of every step-th row; None for any other
    PNG (or a damaged one: PIL says why)."""
    if not png.startswith(_SIGNATURE) or png[12:16] != b"IHDR" or len(png) < 33:
        return None
    width, height, depth, colour, _, _, interlace = _OWN_HEADER.unpack_from(png, 16)
    if (depth, colour, interlace) != (1, 0, 0) or not width or not height:
        return None
    data, at = [], 33
    while at + 8 <= len(png):  # the IDAT chunks' data, in order (CRCs are not checked: zlib checks its stream)
        length, tag = struct.unpack_from(">I", png, at)[0], png[at + 4:at + 8]
        if tag == b"IDAT":
            data.append(png[at + 8:at + 8 + length])
        at += 12 + length
    try:
        raw = zlib.decompress(b"".join(data))
    except zlib.error:
        return None
    row = 1 + (width + 7) // 8
    if len(raw) != height * row:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, row)
    if rows[:, 0].any():  # a row with a filter: PIL's rows, not encode_mask's
        return None
    return np.unpackbits(rows[::step, 1:], axis=1, count=width)[:, ::step].astype(bool)


def encode_image(image: np.ndarray) -> bytes:
    """An image as scored, (H, W, 3) or (H, W) uint8, as a PNG (zlib level 1: written once per image and size)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_image(png: bytes) -> np.ndarray:
    """Inverse of encode_image: (H, W, 3) or (H, W) uint8."""
    return np.asarray(Image.open(io.BytesIO(bytes(png))))
