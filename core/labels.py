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
outline follows an edge in the image (a lesion is darker than its surroundings, a pet differs from its
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

Measured (benchmarks/label_errors.py: 10% of the test masks planted wrong, quick preset; mean AUROC of planted
vs the rest over 50 plantings of one sweep's stored predictions). Without the image evidence: pet sample 0.942
and 0.938 (two sweeps), BUSI 0.699, 0.715 and 0.725 (three); with it: pets 0.959 and 0.963, BUSI 0.743, 0.744 and
0.778; median dice 0.928 / 0.926 and 0.638 / 0.655 / 0.709, cleanlab's soft-minimum on the refit 0.890 / 0.915
and 0.706 / 0.802 / 0.807. The band (3 px at the quick preset's 64 px; 2-4 measured alike), the prior (0.1-0.5
alike) and the evidence to the power 1 (2 or 3 gained BUSI up to 0.02 and cost pets up to 0.03) were chosen on
the first BUSI and pet sweeps and confirmed on the others. Those plantings all started the kinds at "erased";
with every kind planted about as often the same sweeps score pets 0.948 / 0.953, BUSI 0.798 / 0.786 / 0.812
(median dice 0.912 / 0.903, 0.654 / 0.689 / 0.727; cleanlab 0.891 / 0.910, 0.746 / 0.835 / 0.836).
Earlier, on single plantings of the pet sample: contradiction alone 0.948 / 0.855, median dice 0.948 / 0.929 /
0.944; weighing the models' certainty lifted both, most with both kinds of "against the mask" and the certainty
squared: 0.991 / 0.985 / 0.994 (certainty to the power 1: 0.988 / 0.960). Agreement as a factor added nothing over
contradiction, which counts unanimous pixels only; it is kept as a part to show. The quick preset's sweep closes
two to four complete trials (its refits, one per architecture, and the search trials that ran to full length),
so two models that agree already make a consensus (MIN_TRIALS = 2). On the BUSI sample at that budget (models at
test dice about 0.5) no ranking finds the planted masks well, nor at three times it (0.765 at 64 px, 0.833 at
128 px): the models limit the score, not its formula (docs/metrics.md lists the variants tried; two more sweeps
later scored pets 0.923 and BUSI 0.829).

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
# A score at or above this calls the mask a likely error (the dashboard's "leave out likely label errors"):
# on the pet benchmark's three runs planted wrong masks scored 0.37-1.34 and every other image at most
# 0.48-0.56, 90% of them at most 0.36; with the image evidence, over 50 plantings of one pet sweep, 57% of the
# planted masks score 0.5 or more (median 0.64) and 1.7% of the others (90% of them at most 0.22)
LIKELY_LABEL_ERROR = 0.5
# How far the ranking can be trusted depends on the models that vote (benchmarks/label_errors.py, quick preset, 50
# plantings per sweep): at a median test dice of about 0.73 (pet sample, 4-5 voters) a planted wrong mask outranked
# a right one 92-95% of the time (mean AUROC), at about 0.5 (BUSI sample, 2-3 voters) 79-83%. Below this median
# test dice of the complete trials the dashboard calls the ranking a shortlist to review, not a verdict.
SHORTLIST_BELOW_DICE = 0.65
VOTE_GRID = 64        # votes are kept on at most this many cells a side (on_grid): a close's cost bounded per image
EVIDENCE_BAND = 3     # pixels (on the vote grid) each side of a mask's edge whose colours edge_contrast compares
EVIDENCE_PRIOR = 0.25  # contrast added to both sides of image_evidence's ratio: faint edges weigh alike, 1
VOTES = (np.dtype("u1"), np.dtype("<u2"))  # per-pixel vote counts as stored: one byte each up to 255 trials, else two
_HEADER = struct.Struct("<HH")


@dataclass
class LabelParts:
    """The suspect-label score and its parts for N images, aligned by position; NaN = not computed."""

    label_suspicion: np.ndarray
    consensus_dice: np.ndarray
    agreement: np.ndarray
    contradiction: np.ndarray
    image_evidence: np.ndarray  # NaN where no image was given: the score then counts it as neutral, 1


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


def typical_entropy(entropy: np.ndarray) -> float:
    """The sweep's typical entropy: the median over its images of their trials' median (NaN if none measured)."""
    measured = np.asarray(entropy, dtype=np.float64)
    measured = measured[~np.isnan(measured)]
    return float(np.median(measured)) if len(measured) else float("nan")


def suspicion(contradiction: np.ndarray, dice: np.ndarray, entropy: np.ndarray,
              typical: float | None, evidence: np.ndarray | None = None) -> np.ndarray:
    """label_suspicion = sqrt(contradiction x (1 - dice)) x ((1 - entropy) / (1 - typical))^2 x evidence, per image.

    `dice` is the trials' median dice (or the consensus dice where none), `entropy` their median entropy and
    `typical` the sweep's (typical_entropy); an entropy not measured (NaN) counts as typical. `evidence` is
    image_evidence (None or NaN: no image stored, 1). NaN where the contradiction is NaN (too few trials, no truth).
    """
    contradiction = np.asarray(contradiction, dtype=np.float64)
    n = len(contradiction)
    e = _per_image(entropy, n)
    base = 1.0 if typical is None or typical != typical else 1 - min(max(float(typical), 0.0), 1 - 1e-6)
    certainty = np.where(np.isnan(e), 1.0, (1 - np.clip(e, 0.0, 1.0)) / base)
    missed = 1 - np.clip(_per_image(dice, n), 0.0, 1.0)
    image = np.nan_to_num(_per_image(evidence, n), nan=1.0)
    return np.sqrt(contradiction * missed) * certainty ** 2 * image


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


def label_parts(votes: np.ndarray, trials: np.ndarray | int, truth: np.ndarray,
                entropy: np.ndarray | float | None = None, dice_median: np.ndarray | float | None = None,
                typical: float | None = None, images: list[np.ndarray | None] | None = None) -> LabelParts:
    """The score and its parts of N images: votes N (H, W) counts (an array or a sequence; sizes may differ),
    trials (N,) or one count, truth N (H, W) bool,
    entropy (N,) the trials' median mean binary entropy per image in bits (None or NaN: not measured),
    dice_median (N,) the trials' median dice against the mask (None or NaN: the consensus dice stands in),
    typical the sweep's typical entropy (None: typical_entropy of these images),
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
    consensus = 2 * v >= total  # p >= 1/2
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
    given = _per_image(dice_median, n)
    unsure = _per_image(entropy, n)
    few = t < MIN_TRIALS
    evidence = np.full(n, np.nan)
    for k, image in enumerate(images or ()):
        if image is not None and not few[k]:
            evidence[k] = image_evidence(image, truth[k], 2 * np.asarray(votes[k]) >= t[k])
    score = suspicion(contradiction, np.where(np.isnan(given), dice, given), unsure,
                      typical_entropy(unsure) if typical is None else typical, evidence)
    nan = lambda a: np.where(few, np.nan, a).astype(np.float64)  # noqa: E731
    return LabelParts(nan(score), nan(dice), nan(agreement), nan(contradiction), evidence)
