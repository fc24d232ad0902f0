"""A built-in synthetic "pets" dataset written in the official Oxford-IIIT Pet layout.

It lets every part of SegSweep run without the real download, and it is hard in controlled,
measurable ways so that models separate and per-image filters mean something. Each image has:

* a pet: ellipse body + head + ears, legs and tail as thin parts, in a random pose, with a
  breed-specific shape, fur texture and colour distribution (6 breeds: 3 cats, 3 dogs);
* difficulty factors drawn per image, independently of breed: subject size (fg fraction
  ~3%..60%), background kind (flat, gradient, textured noise, clutter with pet-coloured
  distractors), low contrast (background colour near the pet's), dark scenes, occluders drawn
  over the pet (background in the trimap) and sensor noise.

Trimaps are L-mode PNGs with 1 = pet, 2 = background and a thin band of 3 along the visible
pet outline, like the real ones. Output is deterministic in the seed (byte-identical files).
"""

from __future__ import annotations

import colorsys
import functools
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.data.dataset import SYNTHETIC_MARKER, DataError, cache_root
from core.data.layout import (
    ALL_LIST,
    IMAGES_DIR,
    TEST_LIST,
    TRAINVAL_LIST,
    TRIMAP_BACKGROUND,
    TRIMAP_BORDER,
    TRIMAP_PET,
    TRIMAPS_DIR,
    image_path,
    trimap_path,
)

GENERATOR_VERSION = 1
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Breed:
    """What makes a synthetic breed recognisable: shape ranges, fur texture and colours."""

    name: str
    species: int  # 1 = cat, 2 = dog (the official SPECIES column)
    look: str  # one-line description for SYNTHETIC.md
    aspect: tuple[float, float]  # body half-length / body half-height
    head: tuple[float, float]  # head radius, in body half-heights
    ears: str  # "pointy" | "floppy" | "small"
    legs: tuple[float, float]  # leg length
    leg_width: float
    tail: tuple[float, float]  # tail length
    tail_width: float
    snout: float  # snout length relative to head radius (0 = flat face)
    texture: str  # "stripes" | "points" | "smooth" | "spots" | "shaggy" | "brindle"
    hsv: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]  # base colour ranges
    rough: float  # outline raggedness (fur sticking out)
    fur: float  # strength of fine fur noise


BREEDS: tuple[Breed, ...] = (
    Breed("synth_tabby", 1, "orange-brown cat with dark stripes across the body",
          aspect=(1.5, 1.9), head=(0.6, 0.75), ears="pointy", legs=(0.9, 1.3), leg_width=0.17,
          tail=(2.2, 3.0), tail_width=0.14, snout=0.15, texture="stripes",
          hsv=((20, 38), (0.45, 0.8), (0.55, 0.9)), rough=0.04, fur=0.25),
    Breed("synth_siamese", 1, "slim cream cat with dark ears, legs and tail",
          aspect=(1.7, 2.2), head=(0.55, 0.7), ears="pointy", legs=(1.1, 1.5), leg_width=0.14,
          tail=(2.6, 3.4), tail_width=0.11, snout=0.2, texture="points",
          hsv=((30, 45), (0.08, 0.25), (0.78, 0.95)), rough=0.02, fur=0.12),
    Breed("synth_sphynx", 1, "hairless pink-grey cat with large ears and mottled skin",
          aspect=(1.4, 1.8), head=(0.6, 0.72), ears="pointy", legs=(1.0, 1.4), leg_width=0.15,
          tail=(2.0, 2.8), tail_width=0.1, snout=0.1, texture="smooth",
          hsv=((0, 25), (0.15, 0.4), (0.6, 0.85)), rough=0.0, fur=0.04),
    Breed("synth_dalmatian", 2, "long-legged white dog with black spots and floppy ears",
          aspect=(1.6, 2.0), head=(0.7, 0.85), ears="floppy", legs=(1.4, 1.9), leg_width=0.22,
          tail=(1.2, 1.8), tail_width=0.12, snout=0.9, texture="spots",
          hsv=((30, 50), (0.0, 0.08), (0.85, 0.98)), rough=0.02, fur=0.1),
    Breed("synth_shaggy", 2, "short-legged brown dog with long ragged fur",
          aspect=(1.5, 1.9), head=(0.7, 0.9), ears="floppy", legs=(0.5, 0.8), leg_width=0.26,
          tail=(0.8, 1.4), tail_width=0.22, snout=0.6, texture="shaggy",
          hsv=((18, 40), (0.2, 0.55), (0.3, 0.65)), rough=0.14, fur=0.55),
    Breed("synth_boxer", 2, "stocky fawn dog with brindle stripes, small ears and a stub tail",
          aspect=(1.25, 1.55), head=(0.75, 0.9), ears="small", legs=(1.0, 1.4), leg_width=0.3,
          tail=(0.4, 0.7), tail_width=0.16, snout=0.55, texture="brindle",
          hsv=((22, 34), (0.5, 0.75), (0.5, 0.75)), rough=0.02, fur=0.15),
)


def default_synthetic_root(image_size: int, seed: int, n_images: int) -> Path:
    """Where the synthetic set with these parameters lives by default (inside the cache dir)."""
    return cache_root() / "data" / f"synthetic-{image_size}px-{n_images}-s{seed}"


def _parameters_line(n_images: int, image_size: int, seed: int, test_fraction: float) -> str:
    return (
        f"parameters: generator_version={GENERATOR_VERSION} n_images={n_images} "
        f"image_size={image_size} seed={seed} test_fraction={test_fraction!r}"
    )


def _is_complete(root: Path, params: str) -> bool:
    """True when root holds a finished synthetic set made with exactly these parameters."""
    try:
        return params in (root / SYNTHETIC_MARKER).read_text().splitlines()
    except OSError:
        return False


def generate_synthetic(
    root: str | Path,
    n_images: int = 1000,
    image_size: int = 128,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> Path:
    """Write the synthetic dataset to root (atomically) and return root.

    Returns at once when root already holds a complete set with the same parameters. A synthetic
    set with other parameters is replaced; any other non-empty directory is left alone (DataError).
    """
    if n_images < 2:
        raise DataError(f"a synthetic dataset needs at least 2 images, got {n_images}")
    if image_size < 32:
        raise DataError(f"synthetic images must be at least 32 px, got {image_size}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    root = Path(root).expanduser().resolve()
    params = _parameters_line(n_images, image_size, seed, test_fraction)
    if _is_complete(root, params):
        return root
    if root.exists() and not (root / SYNTHETIC_MARKER).exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root} exists and is not a synthetic dataset; choose another directory for --data synthetic")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        _write_dataset(tmp, n_images, image_size, seed, test_fraction, params)
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(root, params):  # a concurrent generator finished first
            return root
        raise
    return root


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename tmp to root; an old (empty or outdated synthetic) root is moved aside and deleted."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-")) / "old"
        os.rename(root, old)
    os.rename(tmp, root)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


# --------------------------------------------------------------------------- layout


def _write_dataset(out: Path, n: int, size: int, seed: int, test_fraction: float, params: str) -> None:
    (out / IMAGES_DIR).mkdir()
    (out / TRIMAPS_DIR).mkdir(parents=True)
    master = np.random.default_rng(seed)
    breed_ids = master.permutation(np.arange(n) % len(BREEDS))
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    is_test = np.zeros(n, dtype=bool)
    is_test[master.permutation(n)[:n_test]] = True

    counters = [0] * len(BREEDS)
    rows: list[tuple[int, int, str, str, bool]] = []  # (breed index, number, name, line, is test)
    for i in range(n):
        b = int(breed_ids[i])
        counters[b] += 1
        breed = BREEDS[b]
        name = f"{breed.name}_{counters[b]}"
        image, trimap = render_image(np.random.default_rng([seed, i]), breed, size)
        Image.fromarray(image).save(image_path(out, name), "JPEG", quality=JPEG_QUALITY)
        Image.fromarray(trimap).save(trimap_path(out, name), "PNG")
        breed_in_species = [x for x in BREEDS if x.species == breed.species].index(breed) + 1
        line = f"{name} {b + 1} {breed.species} {breed_in_species}"
        rows.append((b, counters[b], name, line, bool(is_test[i])))

    rows.sort(key=lambda r: (r[0], r[1]))
    header = [
        "#Image CLASS-ID SPECIES BREED ID",
        f"#ID: 1:{len(BREEDS)} Class ids",
        "#SPECIES: 1:Cat 2:Dog",
        "#BREED ID: 1-3:Cat 1-3:Dog",
        "#SegSweep synthetic data; see SYNTHETIC.md",
    ]
    (out / ALL_LIST).write_text("\n".join(header + [r[3] for r in rows]) + "\n")
    (out / TRAINVAL_LIST).write_text("\n".join(r[3] for r in rows if not r[4]) + "\n")
    (out / TEST_LIST).write_text("\n".join(r[3] for r in rows if r[4]) + "\n")
    (out / SYNTHETIC_MARKER).write_text(_marker_text(n, size, seed, test_fraction, params))  # last: marks complete


def _marker_text(n: int, size: int, seed: int, test_fraction: float, params: str) -> str:
    breeds = "\n".join(
        f"| {b.name} | {'cat' if b.species == 1 else 'dog'} ({b.species}) | {i + 1} | {b.look} |"
        for i, b in enumerate(BREEDS)
    )
    return f"""# SegSweep synthetic pets

Generated by `core/data/synthetic.py` (`generate_synthetic`). Not real photographs: {n} images of
{size}x{size} px with drawn "pets", in the Oxford-IIIT Pet layout (images/*.jpg,
annotations/trimaps/*.png with 1 = pet, 2 = background, 3 = border, annotations/trainval.txt,
test.txt, list.txt). About {test_fraction:.0%} of images are listed in test.txt. The same
parameters always produce byte-identical files.

| breed | species | class id | look |
|---|---|---|---|
{breeds}

Difficulty factors are drawn per image, independently of breed: subject size, background kind
(flat, gradient, textured, cluttered with pet-coloured distractors), low contrast, dark scene,
occluders over the pet (background in the trimap) and sensor noise.

Generator parameters (seed={seed}, n={n}, size={size}):

{params}
"""


# --------------------------------------------------------------------------- drawing helpers


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32)


def _rand_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(0, 360), rng.uniform(0, 0.8), rng.uniform(0.15, 0.95))


def _near_colour(rng: np.random.Generator, c: np.ndarray, spread: float) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*c)
    return _hsv(h * 360 + rng.normal(0, 25 * spread), s + rng.normal(0, 0.2 * spread), v + rng.normal(0, 0.15 * spread))


class _Noise:
    """Smooth periodic value noise evaluated at arbitrary float coordinates (1 unit = 1 cell).

    A random 64x64 lattice is upsampled 4x with bicubic interpolation once, then sampled
    bilinearly with cv2.remap, which is faster than gathering lattice corners in numpy.
    """

    CELLS, UP = 64, 4

    def __init__(self, rng: np.random.Generator):
        n, up = self.CELLS, self.UP
        lattice = np.pad(rng.random((n, n), dtype=np.float32), 8, mode="wrap")
        self.table = cv2.resize(lattice, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)[8 * up : -8 * up, 8 * up : -8 * up]
        self.rng = rng

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ox, oy = self.rng.uniform(0, self.CELLS * self.UP, 2)  # a fresh offset decorrelates calls
        up = np.float32(self.UP)
        mx = (x * up + np.float32(ox)).astype(np.float32, copy=False)  # remap needs float32 maps
        my = (y * up + np.float32(oy)).astype(np.float32, copy=False)
        # BORDER_WRAP does the periodic wrap (coordinates here stay far inside remap's +-32k range)
        return cv2.remap(self.table, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)

    def fbm(self, x: np.ndarray, y: np.ndarray, octaves: int = 3) -> np.ndarray:
        total, norm = 0.0, 0.0
        for k in range(octaves):
            w = 0.5**k
            total = total + w * self(x * 2**k, y * 2**k)
            norm += w
        return total / norm


def _ellipse(u, v, cu, cv, ru, rv, angle=0.0):
    du, dv = u - cu, v - cv
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    return (du / ru) ** 2 + (dv / rv) ** 2 <= 1.0


def _capsule(u, v, p0, p1, r):
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / max(du * du + dv * dv, 1e-9), 0.0, 1.0)
    return (u - p0[0] - t * du) ** 2 + (v - p0[1] - t * dv) ** 2 <= r * r


def _triangle(u, v, a, b, c):
    def side(p, q):
        return (q[0] - p[0]) * (v - p[1]) - (q[1] - p[1]) * (u - p[0])

    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    return ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))


def _rect(x, y, cx, cy, hw, hh, angle):
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return (np.abs(c * dx + s * dy) <= hw) & (np.abs(-s * dx + c * dy) <= hh)


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    h, w = m.shape
    p = np.pad(m, r)
    out = np.zeros_like(m)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def _interior(m: np.ndarray, r: int) -> np.ndarray:
    """Pixels of m farther than r from anything outside it (the trimap's 1s)."""
    return m & ~_dilate(~m, r)


def _soften(m: np.ndarray) -> np.ndarray:
    """3x3 box blur of a mask -> alpha in [0, 1] (anti-aliased edges)."""
    h, w = m.shape
    p = np.pad(m.astype(np.float32), 1, mode="edge")
    return sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / np.float32(9)


# --------------------------------------------------------------------------- the pet


@dataclass
class _Figure:
    """One pet's shape in its own frame: body centred at 0, body half-height 1, v pointing down."""

    breed: Breed
    aspect: float
    head_r: float
    head_c: tuple[float, float]
    ears: list
    legs: list
    tail: list

    @staticmethod
    def random(rng: np.random.Generator, breed: Breed) -> "_Figure":
        a = rng.uniform(*breed.aspect)
        hr = rng.uniform(*breed.head)
        head_c = (a + hr * 0.45, -0.85 - hr * 0.3 + rng.uniform(-0.4, 0.4))
        ears = []
        for phi in (-1.95, -1.2):  # angles (radians) around the head top, back and front
            phi += rng.uniform(-0.2, 0.2)
            d = np.array([math.cos(phi), math.sin(phi)])
            n = np.array([-d[1], d[0]])
            if breed.ears == "floppy":
                ears.append(("ellipse", head_c[0] - hr * 0.4 + (phi + 1.6) * 0.3, head_c[1] + hr * 0.35,
                             hr * 0.3, hr * 0.75, rng.uniform(-0.4, 0.2)))
            else:
                height = hr * (0.85 if breed.ears == "pointy" else 0.45) * rng.uniform(0.85, 1.2)
                base = np.array(head_c) + d * hr * 0.75
                ears.append(("tri", tuple(base + n * hr * 0.38), tuple(base - n * hr * 0.38), tuple(base + d * (hr * 0.25 + height))))
        lying = rng.random() < 0.2
        legs = []
        for attach in (0.6, 0.38, -0.45, -0.68):
            length = rng.uniform(*breed.legs) * (0.45 if lying else 1.0)
            angle = rng.uniform(1.0, 1.4) if lying else rng.uniform(-0.45, 0.45)  # from straight down, + = forward
            p0 = (attach * a, 0.55)
            legs.append((p0, (p0[0] + length * math.sin(angle), p0[1] + length * math.cos(angle))))
        pos = np.array([-a * 0.92, -0.25])
        direction = math.pi + rng.uniform(-1.1, 0.5)
        seg = rng.uniform(*breed.tail) / 3
        tail = []
        for k in range(3):
            nxt = pos + seg * np.array([math.cos(direction), math.sin(direction)])
            tail.append((tuple(pos), tuple(nxt), breed.tail_width * (1.0 - 0.15 * k)))
            pos, direction = nxt, direction + rng.uniform(-0.7, 0.7)
        return _Figure(breed, a, hr, head_c, ears, legs, tail)

    def parts(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whole pet mask, "extremities" mask: ears, lower legs and tail) at local coords u, v."""
        b, a, hr, (hu, hv) = self.breed, self.aspect, self.head_r, self.head_c
        body = _ellipse(u, v, 0.0, 0.0, a, 1.0)
        head = _ellipse(u, v, hu, hv, hr * 1.05, hr)
        neck = _capsule(u, v, (a * 0.6, -0.3), (hu, hv), hr * 0.62)
        snout = _ellipse(u, v, hu + hr * (0.55 + 0.45 * b.snout), hv + hr * 0.3, hr * (0.3 + 0.35 * b.snout), hr * 0.42)
        ext = np.zeros_like(body)
        for e in self.ears:
            ext |= _ellipse(u, v, *e[1:]) if e[0] == "ellipse" else _triangle(u, v, *e[1:])
        for p0, p1 in self.legs:
            ext |= _capsule(u, v, p0, p1, b.leg_width) | _ellipse(u, v, p1[0], p1[1], b.leg_width * 1.3, b.leg_width)
        for p0, p1, r in self.tail:
            ext |= _capsule(u, v, p0, p1, r)
        trunk = body | head | neck | snout
        return trunk | ext, ext & ~trunk

    def extent(self) -> tuple[float, np.ndarray, float]:
        """(area, centroid, radius about the centroid) of the pet in local units, on a coarse grid."""
        step = 0.1
        v, u = np.mgrid[-4.5:4.5:step, -6:6:step].astype(np.float32)
        m, _ = self.parts(u, v)
        pts = np.stack([u[m], v[m]], axis=1)
        centroid = pts.mean(axis=0)
        radius = float(np.sqrt(((pts - centroid) ** 2).sum(axis=1)).max()) + step
        return float(m.sum()) * step * step, centroid, radius


def _pet_colours(rng: np.random.Generator, breed: Breed) -> tuple[np.ndarray, np.ndarray]:
    (h0, h1), (s0, s1), (v0, v1) = breed.hsv
    h, s, v = rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1)
    base = _hsv(h, s, v)
    if breed.texture == "points":
        second = _hsv(rng.uniform(15, 30), rng.uniform(0.4, 0.6), rng.uniform(0.12, 0.3))
    elif breed.texture == "spots":
        second = _hsv(h, 0.1, rng.uniform(0.04, 0.2))
    elif breed.texture == "smooth":
        second = _hsv(h - 8, s + 0.12, v * 0.82)
    else:
        second = _hsv(h - 4, s * 1.1, v * rng.uniform(0.3, 0.5))
    return base, second


def _pet_pattern(noise: _Noise, breed: Breed, u: np.ndarray, v: np.ndarray, ext: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Per-pixel mix in [0, 1] between the pet's base (0) and second (1) colour."""
    t = breed.texture
    if t == "stripes":
        warp = noise(u * 1.5, v * 1.5) * 2.0
        return np.clip(np.sin(2 * np.pi * (u * rng.uniform(1.1, 1.6) + 0.15 * v + warp)) * 2.5 - 0.5, 0, 1) * 0.85
    if t == "points":
        far = np.clip(np.maximum((np.abs(u) - 1.4) / 1.0, (v - 0.9) / 0.7), 0, 1)
        return np.maximum(far, ext.astype(np.float32) * 0.9)
    if t == "smooth":
        return np.clip(noise.fbm(u * 1.2, v * 1.2) * 1.6 - 0.5, 0, 1) * 0.7 + 0.15 * (np.sin(v * 9 + noise(u * 3, v * 3) * 3) > 0.7)
    if t == "spots":
        return (noise(u * 3.2, v * 3.2) > rng.uniform(0.68, 0.76)).astype(np.float32)
    if t == "shaggy":
        return noise(u * 1.2, v * 9.0) * 0.7
    if t == "brindle":
        return np.clip(np.sin(2 * np.pi * (v * 4.5 + u * 1.2 + noise(u * 2, v * 2) * 1.5)) * 2 - 1, 0, 1) * 0.55
    raise ValueError(t)


# --------------------------------------------------------------------------- backgrounds and scene


def _background(rng: np.random.Generator, noise: _Noise, kind: str, x: np.ndarray, y: np.ndarray,
                pet_colour: np.ndarray, low_contrast: bool) -> np.ndarray:
    if low_contrast:
        c1, c2 = _near_colour(rng, pet_colour, 0.5), _near_colour(rng, pet_colour, 0.5)
    else:
        c1, c2 = _rand_colour(rng), _rand_colour(rng)
    if kind == "flat":
        t = noise.fbm(x * 3, y * 3) * 0.15
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        t = np.clip((x - 0.5) * math.cos(ang) + (y - 0.5) * math.sin(ang) + 0.5, 0, 1)
    else:  # "texture" / "clutter": noise at a random scale, sometimes stretched (grass, wood)
        f = rng.uniform(3, 14)
        stretch = float(rng.choice([1.0, 1.0, 4.0]))
        t = noise.fbm(x * f, y * f * stretch, octaves=4)
    img = c1 + (c2 - c1) * t[..., None]
    if kind == "clutter":
        for _ in range(rng.integers(3, 10)):
            colour = _near_colour(rng, pet_colour, 0.6) if rng.random() < 0.5 else _rand_colour(rng)
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.22)
            shape = rng.integers(3)
            if shape == 0:
                m = _ellipse(x, y, cx, cy, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi))
            elif shape == 1:
                m = _rect(x, y, cx, cy, r, r * rng.uniform(0.2, 1.0), rng.uniform(0, np.pi))
            else:  # blob with a noisy outline
                m = ((x - cx) ** 2 + (y - cy) ** 2) < (r * (0.7 + 0.6 * noise(x * 8, y * 8))) ** 2
            shade = 0.85 + 0.3 * noise(x * 10, y * 10)
            img = np.where(m[..., None], colour * shade[..., None], img)
    return img


@functools.lru_cache(maxsize=4)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in pixels and in [0, 1]; read-only, shared between images."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    grids = (xx, yy, xx / size, yy / size)
    for g in grids:
        g.flags.writeable = False
    return grids


def render_image(rng: np.random.Generator, breed: Breed, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene -> (HxWx3 uint8 RGB image, HxW uint8 trimap with values 1/2/3)."""
    noise = _Noise(rng)
    xx, yy, x, y = _grids(size)

    # Difficulty factors: drawn here, independently of the breed.
    target_fg = math.exp(rng.uniform(math.log(0.03), math.log(0.55)))
    target_fg = max(target_fg, 120 / size**2)  # tiny images: keep some pet interior inside the border band
    bg_kind = rng.choice(["flat", "gradient", "texture", "clutter"], p=[0.2, 0.25, 0.3, 0.25])
    low_contrast = rng.random() < 0.25
    exposure = rng.uniform(0.1, 0.35) if rng.random() < 0.2 else rng.uniform(0.75, 1.1)
    occluded = rng.random() < 0.25
    sigma = rng.uniform(0.0, 0.03)

    fig = _Figure.random(rng, breed)
    area, centroid, radius = fig.extent()
    scale = math.sqrt(target_fg * size * size / area)  # pixels per local unit
    r_px = radius * scale
    lo, hi = min(r_px * 0.8, size / 2), max(size - r_px * 0.8, size / 2)
    px, py = rng.uniform(lo, hi), rng.uniform(lo, hi)
    theta = rng.normal(0, 0.3) if rng.random() < 0.85 else rng.uniform(-np.pi, np.pi)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    c, s = math.cos(theta), math.sin(theta)
    # Draw the pet only inside its bounding window: most pets cover a small part of the frame.
    reach = (radius + 2 * breed.rough) * scale + 3
    win = (slice(max(0, int(py - reach)), min(size, int(py + reach) + 1)),
           slice(max(0, int(px - reach)), min(size, int(px + reach) + 1)))
    dx, dy = xx[win] - px, yy[win] - py
    u = facing * (c * dx + s * dy) / scale + centroid[0]
    v = (-s * dx + c * dy) / scale + centroid[1]
    if breed.rough:
        u = u + breed.rough * (noise(u * 6, v * 6) - 0.5) * 2
        v = v + breed.rough * (noise(u * 6, v * 6) - 0.5) * 2
    pet_win, ext = fig.parts(u, v)
    pet = np.zeros((size, size), bool)
    pet[win] = pet_win

    base, second = _pet_colours(rng, breed)
    mix = _pet_pattern(noise, breed, u, v, ext, rng)[..., None]
    pet_rgb = base + (second - base) * mix
    fur = 1.0 + breed.fur * (noise(u * 4, v * 22) - 0.5)
    shading = np.clip(1.08 - 0.1 * v, 0.75, 1.2)
    pet_rgb = pet_rgb * (fur * shading)[..., None]

    img = _background(rng, noise, bg_kind, x, y, base, low_contrast)
    alpha = _soften(pet)[win][..., None]
    img[win] = img[win] * (1 - alpha) + pet_rgb * alpha

    r = max(1, round(size / 128))  # half-width of the trimap's border band

    visible = pet
    if occluded:
        occ = _occluder(rng, noise, x, y, px / size, py / size, r_px / size)
        if _interior(pet & ~occ, r).sum() >= 0.4 * _interior(pet, r).sum():  # keep most of the pet
            colour = _rand_colour(rng) * (0.8 + 0.4 * noise(x * 12, y * 12))[..., None]
            a = _soften(occ)[..., None]
            img = img * (1 - a) + colour * a
            visible = pet & ~occ

    sigma += 0.02 if exposure < 0.5 else 0.0
    img = img * np.float32(exposure) + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)

    band = _dilate(visible, r) & _dilate(~visible, r)
    trimap = np.full((size, size), TRIMAP_BACKGROUND, np.uint8)
    trimap[visible] = TRIMAP_PET
    trimap[band] = TRIMAP_BORDER
    return image, trimap


def _occluder(rng: np.random.Generator, noise: _Noise, x, y, cx: float, cy: float, r: float) -> np.ndarray:
    """Bars (fence, cage) across the scene or an object overlapping the pet."""
    if rng.random() < 0.6:
        angle, width = rng.uniform(0, np.pi), rng.uniform(0.02, 0.06)
        gap = rng.uniform(0.12, 0.3)
        d = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle) + rng.uniform(0, gap)
        return np.abs(d - gap * np.round(d / gap)) < width / 2
    ox, oy = cx + rng.uniform(-0.7, 0.7) * r, cy + rng.uniform(-0.7, 0.7) * r
    size = rng.uniform(0.1, 0.25)
    if rng.random() < 0.5:
        return _ellipse(x, y, ox, oy, size, size * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi))
    return _rect(x, y, ox, oy, size, size * rng.uniform(0.3, 1.0), rng.uniform(0, np.pi))
