"""Which labels look wrong: the suspect-label score of an image from its models' votes, their certainty, its mask
and the image itself.

A sweep trains many models; every complete trial stores its predicted mask of every test image, its dice
against the mask, and the mean binary entropy of its probabilities there (image_results.entropy, bits:
0 sure .. 1 a coin toss). Per image, V counts per pixel how many of the T trials predicted foreground,
and M is the given mask (the truth exactly as scored). From p = V / T:

* consensus_dice  dice of the majority mask K = (p >= 1/2) against M (1 when both are empty);
* agreement       how unanimous the models are: mean of |2p - 1| over the pixels that any model or the
                  mask calls foreground (1 = every model the same mask, 0 = a coin toss everywhere);
* contradiction   the area where the models are near-unanimous (p >= CONFIDENT or p <= 1 - CONFIDENT)
                  and the majority disagrees with M, divided by |K u M| (0 when both are empty);
* image_evidence  whether the image's own edges back K or M: 2 (c_K + q) / (c_K + c_M + 2q), c a mask's
                  edge_contrast (how far the mean colour of the band of EVIDENCE_BAND pixels inside its edge lies
                  from that of the ring outside, in pooled standard deviations), q = EVIDENCE_PRIOR; 1 when both
                  are equally clear (or K is M), towards 2 when only the models' mask follows an edge, towards 0
                  when only the given one does; NaN (counted as 1) without a stored image;
* label_suspicion = sqrt(contradiction x (1 - dice)) x ((1 - entropy) / (1 - typical))^2 x image_evidence, with
                  dice and entropy the medians over the trials (sweep_images.dice_median, entropy_median) and
                  typical the sweep's median of the images' entropy. Without a dice the consensus dice stands in;
                  without an entropy (results written before schema v2) the image counts as typical.
                  0 .. about 3: about sqrt(contradiction x (1 - dice)) for an image of typical certainty and
                  evidence.

Why it separates a wrong mask from a hard image: a wrong mask (erased, grown, shrunk, shifted, another
image's) leaves the models, which learnt from the many right masks, agreeing with each other, and sure
of themselves, about an area the mask gets wrong: the area is unanimous (contradiction), each model
scores badly against the mask (1 - dice), and their entropy is low. A hard image splits the models
(where they err they err differently: the pixels against the mask are contested, not counted, so
contradiction stays low however bad the dice) or leaves each of them unsure (high entropy, and the
certainty enters squared); either way the product stays low. The geometric mean needs both signs that
the models are against the mask: the votes' (unanimous area) and each trial's own (its dice). An image
every model gets right scores near 0; all empty (mask and every prediction) scores 0. With fewer than
MIN_TRIALS votes, or no stored truth: NULL (NaN here).

Weak models (a quick sweep on a hard dataset) are often unanimous, sure and wrong: they all miss a faint
lesion whose mask is right, and the votes alone cannot tell that from a wrong mask. The image can: a drawn
outline follows an edge in the image (a lesion is darker than its surroundings, an animal differs from its
background), while a grown, shrunk, shifted or swapped mask cuts through plain tissue or background, and an
erased one has no edge at all. So the evidence compares the two candidate outlines on the image itself, without
trusting the models: where the mask follows the image better than the models' majority, the models are the
likelier to be wrong (a hard image; the score shrinks up to towards 0), where the majority follows it better, the
mask is (the score grows up to 2x). Both outlines faint or alike: 1, the votes decide. The prior q keeps two
faint contrasts from making a large ratio out of noise.

The certainty is measured against the sweep's typical image because how sure models are at all depends
on the budget (a quick sweep's models have entropy about 0.5 everywhere, a long sweep's about 0.1):
relative to the sweep, one threshold reads alike for both (dashboards' "likely a label error"), and the
ranking within a sweep is the same as with the absolute (1 - entropy)^2. The typical entropy moves as
trials close, so every close rescores every image of the sweep from the stored parts (no votes read).

The quick preset's sweep closes two to four complete trials (its refits, one per architecture, and the
search trials that ran to full length), so two models that agree already make a consensus (MIN_TRIALS = 2).
Agreement adds nothing to the score over contradiction, which counts unanimous pixels only; it is kept as a part
to show. How well the score finds planted wrong masks, and how the constants were chosen: docs/benchmarks.md,
"Suspect labels on planted errors".

The steps, each written once and called by the store's upkeep (core.store.suspicion), the dashboard and the
benchmark: `vote_parts` (votes -> parts, with `majority` the models' majority mask), `score_parts` (parts ->
label_suspicion, with `scored_dice` the dice fallback and `typical_entropy` the sweep's typical certainty), and
`label_parts`, both at once.

The votes are stored per sweep and image (sweep_image_votes.votes, encode_votes) so that closing a
trial adds its masks without reading the earlier ones again. They are kept on a grid of at most VOTE_GRID
cells a side (on_grid: every s-th pixel of the mask and of the truth, s = ceil(side / VOTE_GRID)), so a close
costs the same at any image size: at 64 px and below the grid is the image itself and every part is exact;
at 256 px it is every 4th pixel of every 4th row, 16x less work. Subsampling with a stride is exact on counts
(the grid's votes are the votes of its pixels), so the parts (area ratios) become estimates of the full-size
ones from a 1-in-s^2 sample of the pixels, and the score is that of the subsampled masks and truth. Votes
stored at full size by an older version are brought to the grid by the same slicing when next read.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

MIN_TRIALS = 2        # fewer complete trials with a mask: no score (one model is no consensus)
CONFIDENT = 0.9       # a pixel is unanimous when at least this share of the models vote the same way
LIKELY_LABEL_ERROR = 0.5  # a score at or above this calls the mask a likely error (docs/benchmarks.md: how often)
# Below this median test dice of the complete trials the dashboard calls the ranking a shortlist to review, not a
# verdict: weak models are often unanimous, sure and wrong (docs/benchmarks.md, "Suspect labels on planted errors")
SHORTLIST_BELOW_DICE = 0.65
VOTE_GRID = 64        # votes are kept on at most this many cells a side (on_grid): a close's cost bounded per image
EVIDENCE_BAND = 3     # pixels (on the vote grid) each side of a mask's edge whose colours edge_contrast compares
EVIDENCE_PRIOR = 0.25  # contrast added to both sides of image_evidence's ratio: faint edges weigh alike, 1
VOTES = (np.dtype("u1"), np.dtype("<u2"))  # per-pixel vote counts as stored: one byte each up to 255 trials, else two
_HEADER = struct.Struct("<HH")


@dataclass
class VoteParts:
    """The parts of N images' score that their votes, truths and images give, aligned by position; NaN = not
    computed (fewer than MIN_TRIALS trials)."""

    consensus_dice: np.ndarray
    agreement: np.ndarray
    contradiction: np.ndarray
    image_evidence: np.ndarray  # NaN where no image was given: the score then counts it as neutral, 1


@dataclass
class LabelParts(VoteParts):
    """The parts and the suspect-label score they make (score_parts)."""

    label_suspicion: np.ndarray


def vote_stride(side: int) -> int:
    """The stride that brings an image of `side` pixels (its larger side) to at most VOTE_GRID cells."""
    return max(1, -(-int(side) // VOTE_GRID))


def on_grid(pixels: np.ndarray) -> np.ndarray:
    """A mask, truth or per-pixel vote counts (H, W) on the vote grid: every s-th pixel of every s-th row,
    s = vote_stride(max(H, W)); the array itself (no copy) at VOTE_GRID or less a side. Exact on counts, and
    on_grid(on_grid(x)) is on_grid(x), so votes stored at full size are brought to the grid by the same call."""
    pixels = np.asarray(pixels)
    step = vote_stride(max(pixels.shape))
    return pixels if step == 1 else pixels[::step, ::step]


def encode_votes(votes: np.ndarray) -> bytes:
    """Per-pixel vote counts (H, W) as stored (sweep_image_votes.votes): a (height, width) header, then the counts
    zlib-compressed, one byte each while they fit (up to 255 trials: half the work of a close), else two
    (little-endian); the stream's length tells which. Bool or uint8 counts are stored as they are, unscanned."""
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.size == 0:
        raise ValueError(f"votes must be a non-empty 2-D array, got shape {votes.shape}")
    if votes.dtype in (bool, VOTES[0]):  # one byte a count already: nothing to check
        kind = VOTES[0]
    else:
        low, high = int(votes.min()), int(votes.max())
        if low < 0 or high > np.iinfo(VOTES[-1]).max:
            raise ValueError("vote counts must lie in 0..65535")
        kind = VOTES[0] if high <= np.iinfo(VOTES[0]).max else VOTES[1]
    data = votes.view(np.uint8) if votes.dtype == bool else np.asarray(votes, dtype=kind)  # no copy where it can be
    return _HEADER.pack(*votes.shape) + zlib.compress(np.ascontiguousarray(data).tobytes(), 1)


def decode_votes(blob: bytes) -> np.ndarray:
    """Inverse of encode_votes: (H, W) counts as stored, uint8 or uint16 (add_vote adds to them without overflow)."""
    height, width = _HEADER.unpack_from(blob)
    raw = zlib.decompress(blob[_HEADER.size:])
    kind = VOTES[0] if len(raw) == height * width else VOTES[1]
    return np.frombuffer(raw, dtype=kind).reshape(height, width).copy()


def add_vote(votes: np.ndarray, mask: np.ndarray, trials: int) -> np.ndarray:
    """Counts of `trials` trials with one more mask of the same shape added: uint8 while `trials` + 1 fit in a
    byte (encode_votes then stores them unscanned), else uint16."""
    kind = VOTES[0] if trials + 1 <= 255 else VOTES[1]
    return np.add(votes, mask.view(np.uint8) if mask.dtype == bool else mask, dtype=kind)  # bytes add fastest


def _per_image(values: np.ndarray | float | None, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(np.nan if values is None else values, dtype=np.float64), (n,))


def majority(votes: np.ndarray, trials: np.ndarray | int | float) -> np.ndarray:
    """The models' majority mask: where at least half the trials voted foreground (2 x votes >= trials, p >= 1/2).
    `votes` are counts (widened first: twice a byte's count must not wrap) or vote shares with trials = 1."""
    votes = np.asarray(votes)
    return np.multiply(votes, 2, dtype=np.result_type(votes.dtype, np.int32)) >= trials


def scored_dice(dice_median: np.ndarray, consensus_dice: np.ndarray) -> np.ndarray:
    """The dice the score weighs per image: the trials' median dice, else (NaN: not measured) the consensus dice."""
    return np.where(np.isnan(dice_median), consensus_dice, dice_median)


def typical_entropy(entropy: np.ndarray) -> float:
    """The sweep's typical entropy: the median over its images of their trials' median (NaN if none measured)."""
    measured = np.asarray(entropy, dtype=np.float64)
    measured = measured[~np.isnan(measured)]
    return float(np.median(measured)) if len(measured) else float("nan")


def suspicion(contradiction: np.ndarray, dice: np.ndarray, entropy: np.ndarray,
              typical: float | None, evidence: np.ndarray | None = None) -> np.ndarray:
    """label_suspicion = sqrt(contradiction x (1 - dice)) x ((1 - entropy) / (1 - typical))^2 x evidence, per image.

    `dice` is scored_dice, `entropy` the trials' median entropy and `typical` the sweep's (typical_entropy); an
    entropy not measured (NaN) counts as typical. `evidence` is image_evidence (None or NaN: no image stored, 1).
    NaN where the contradiction is NaN (too few trials, no truth).
    """
    contradiction = np.asarray(contradiction, dtype=np.float64)
    n = len(contradiction)
    e = _per_image(entropy, n)
    base = 1.0 if typical is None or typical != typical else 1 - min(max(float(typical), 0.0), 1 - 1e-6)
    certainty = np.where(np.isnan(e), 1.0, (1 - np.clip(e, 0.0, 1.0)) / base)
    missed = 1 - np.clip(_per_image(dice, n), 0.0, 1.0)
    image = np.nan_to_num(_per_image(evidence, n), nan=1.0)
    return np.sqrt(contradiction * missed) * certainty ** 2 * image


def score_parts(parts: VoteParts, entropy: np.ndarray | float | None = None,
                dice_median: np.ndarray | float | None = None, typical: float | None = None) -> np.ndarray:
    """Parts -> label_suspicion of N images: `entropy` (N,) the trials' median entropy per image (None or NaN: not
    measured), `dice_median` (N,) their median dice (None or NaN: the consensus dice stands in, scored_dice),
    `typical` the sweep's typical entropy (None: typical_entropy of these images, which must then be the sweep's)."""
    n = len(parts.contradiction)
    unsure = _per_image(entropy, n)
    return suspicion(parts.contradiction, scored_dice(_per_image(dice_median, n), parts.consensus_dice), unsure,
                     typical_entropy(unsure) if typical is None else typical, parts.image_evidence)


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def edge_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """How sharply an image changes across a mask's edge: the distance between the mean colour of the band of
    EVIDENCE_BAND pixels inside the edge and that of the ring as wide outside it, over their pooled standard
    deviation (colours in 0..1). 0 for an empty or full mask: it has no edge. `image` (H, W) or (H, W, C)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any() or mask.all():
        return 0.0
    grown = cv2.dilate(mask, _CROSS, iterations=EVIDENCE_BAND, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    core = cv2.erode(mask, _CROSS, iterations=EVIDENCE_BAND, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    ring, band = (grown > mask).view(np.uint8), (mask > core).view(np.uint8)
    if not ring.any():
        return 0.0
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    inside, inside_sd = cv2.meanStdDev(pixels, mask=band if band.any() else mask)
    outside, outside_sd = cv2.meanStdDev(pixels, mask=ring)
    spread = np.sqrt((np.mean(inside_sd ** 2) + np.mean(outside_sd ** 2)) / 2) / 255.0 + 1e-3
    return float(np.linalg.norm(inside - outside) / 255.0 / spread)


def image_evidence(image: np.ndarray, truth: np.ndarray, consensus: np.ndarray) -> float:
    """Whether the image backs the models' majority mask or the given one: 2 (c_K + p) / (c_K + c_M + 2p), with c
    each mask's edge_contrast and p EVIDENCE_PRIOR; 1 when both are equally clear, towards 2 when only the
    models' mask follows an edge in the image, towards 0 when only the given one does."""
    ours, given = edge_contrast(image, consensus), edge_contrast(image, truth)
    return 2 * (ours + EVIDENCE_PRIOR) / (ours + given + 2 * EVIDENCE_PRIOR)


def vote_parts(votes: np.ndarray, trials: np.ndarray | int, truth: np.ndarray,
               images: list[np.ndarray | None] | None = None) -> VoteParts:
    """Votes -> the parts of N images: votes N (H, W) counts (an array or a sequence; sizes may differ),
    trials (N,) or one count, truth N (H, W) bool,
    images N (H, W, C) uint8 images as scored, on the votes' grid (None, or None for one: no image evidence).

    Images with fewer than MIN_TRIALS trials get NaN throughout.
    """
    if isinstance(votes, np.ndarray) and votes.ndim == 2:
        votes, truth = [votes], [truth]
    n = len(votes)
    if len(truth) != n:
        raise ValueError(f"{n} images' votes but {len(truth)} truths")
    t = np.broadcast_to(np.asarray(trials, dtype=np.int64), (n,))
    # every part is a sum over pixels of a function of (votes, truth): one histogram per image of the pairs,
    # a single pass over its pixels, and the rest is arithmetic on (T + 1) x 2 counts
    top = int(max([t.max(initial=0), *(int(np.max(v)) for v in votes)])) + 1
    hist = np.zeros((n, top, 2), np.int64)  # [image, votes, truth]
    for k, (image_votes, image_truth) in enumerate(zip(votes, truth)):
        image_votes, image_truth = np.asarray(image_votes), np.asarray(image_truth, dtype=bool)
        if image_votes.shape != image_truth.shape:
            raise ValueError(f"votes {image_votes.shape} and truth {image_truth.shape} differ in shape")
        key = np.multiply(image_votes.reshape(-1), 2, dtype=np.int32)
        key += image_truth.reshape(-1)
        hist[k] = np.bincount(key, minlength=2 * top).reshape(top, 2)
    v = np.arange(top)[None, :]
    total = t[:, None]
    consensus = majority(v, total)
    # p >= CONFIDENT or p <= 1 - CONFIDENT, as whole vote counts (rounded first: 0.9 x 10 is 9, not 9.000...02)
    unanimous = (v >= np.ceil(np.round(CONFIDENT * total, 9))) | (v <= np.floor(np.round((1 - CONFIDENT) * total, 9)))
    off, on = hist[..., 0], hist[..., 1]  # pixels the mask leaves out / calls foreground, by votes
    both = (on * consensus).sum(axis=1)
    sizes = ((off + on) * consensus).sum(axis=1) + on.sum(axis=1)
    union = (off * consensus).sum(axis=1) + on.sum(axis=1)
    region = off.copy()  # any vote or the mask: every pixel but those with no vote outside the mask
    region[:, 0] = 0
    region = region + on
    inside = region.sum(axis=1)
    certainty = (region * np.abs(2 * v - total)).sum(axis=1)  # sum of |2p - 1| x T
    against = (np.where(consensus, off, on) * unanimous).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sizes > 0, 2 * both / sizes, 1.0)
        agreement = np.where(inside > 0, certainty / (inside * np.maximum(t, 1)), 1.0)
        contradiction = np.where(union > 0, against / union, 0.0)
    few = t < MIN_TRIALS
    evidence = np.full(n, np.nan)
    for k, image in enumerate(images or ()):
        if image is not None and not few[k]:
            evidence[k] = image_evidence(image, truth[k], majority(votes[k], t[k]))
    nan = lambda a: np.where(few, np.nan, a).astype(np.float64)  # noqa: E731
    return VoteParts(nan(dice), nan(agreement), nan(contradiction), evidence)


def label_parts(votes: np.ndarray, trials: np.ndarray | int, truth: np.ndarray,
                entropy: np.ndarray | float | None = None, dice_median: np.ndarray | float | None = None,
                typical: float | None = None, images: list[np.ndarray | None] | None = None) -> LabelParts:
    """The score and its parts of N images at once: vote_parts, then score_parts (see both for the arguments)."""
    parts = vote_parts(votes, trials, truth, images)
    return LabelParts(**vars(parts), label_suspicion=score_parts(parts, entropy, dice_median, typical))
