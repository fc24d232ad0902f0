"""The suspect-label score on constructed votes: a wrong mask scores high, a hard image low, nothing at all 0."""
from __future__ import annotations

import numpy as np
import pytest

from core.labels import (MIN_TRIALS, VOTE_GRID, add_vote, decode_votes, encode_votes, label_parts, majority, on_grid,
                         score_parts, scored_dice, typical_entropy, vote_parts)

S = 32


def square(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((S, S), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def votes_of(*masks: np.ndarray) -> np.ndarray:
    return np.sum(np.stack(masks).astype(np.int64), axis=0)


def parts(votes: np.ndarray, trials: int, truth: np.ndarray) -> dict[str, float]:
    p = label_parts(votes[None], np.array([trials]), truth[None])
    return {name: float(getattr(p, name)[0]) for name in ("label_suspicion", "consensus_dice", "agreement",
                                                           "contradiction")}


def test_models_that_agree_against_an_erased_mask_score_the_label_as_suspect():
    pet = square(8, 8, 16)
    got = parts(votes_of(*[pet] * 6), 6, np.zeros((S, S), bool))
    assert got == {"label_suspicion": 1.0, "consensus_dice": 0.0, "agreement": 1.0, "contradiction": 1.0}


def test_models_that_agree_against_a_shifted_mask_score_high():
    pet = square(4, 4, 16)
    got = parts(votes_of(*[pet] * 5), 5, square(12, 12, 16))
    # consensus and mask overlap 8 x 8 of 2 x 256 - 64 = 448 united pixels: everything else is unanimous and wrong
    assert got["contradiction"] == pytest.approx(384 / 448)
    assert got["consensus_dice"] == pytest.approx(2 * 64 / 512)
    assert got["label_suspicion"] > 0.6


def test_models_that_disagree_with_each_other_score_low_even_when_the_majority_misses_the_mask():
    truth = square(8, 8, 16)
    guesses = [square(8 + d, 8 - d, 16) for d in (-6, -3, 0, 3, 6)] + [square(0, 0, 6), np.zeros((S, S), bool)]
    hard = parts(votes_of(*guesses), len(guesses), truth)
    wrong = parts(votes_of(*[square(0, 16, 16)] * len(guesses)), len(guesses), truth)
    assert hard["agreement"] < 0.6 and hard["label_suspicion"] < 0.15
    assert wrong["label_suspicion"] > 5 * hard["label_suspicion"]


def test_models_unsure_of_themselves_score_lower_than_sure_ones_against_the_same_mask():
    pet = square(8, 8, 16)
    votes, truth = votes_of(*[pet] * 4)[None], square(12, 12, 16)[None]
    plain = label_parts(votes, 4, truth)
    against = np.sqrt(plain.contradiction[0] * (1 - plain.consensus_dice[0]))
    assert plain.label_suspicion[0] == pytest.approx(against)  # no entropy, no dice: the votes alone
    # certainty against the sweep's typical image (entropy 0.5 here): surer than typical raises the score
    sure = label_parts(votes, 4, truth, entropy=np.array([0.1]), typical=0.5).label_suspicion[0]
    unsure = label_parts(votes, 4, truth, entropy=np.array([0.8]), typical=0.5).label_suspicion[0]
    unknown = label_parts(votes, 4, truth, entropy=np.array([np.nan]), typical=0.5).label_suspicion[0]
    assert sure == pytest.approx((0.9 / 0.5) ** 2 * against) and unsure == pytest.approx((0.2 / 0.5) ** 2 * against)
    assert unknown == pytest.approx(against)  # not measured (results from before schema v2): typical
    batch = label_parts(np.concatenate([votes] * 3), 4, np.concatenate([truth] * 3), entropy=np.array([0.1, 0.5, 0.8]))
    assert batch.label_suspicion.tolist() == pytest.approx([sure, against, unsure])  # typical: the batch's median


def test_models_each_scoring_well_against_the_mask_lower_the_score_of_their_unanimous_area():
    votes, truth = votes_of(*[square(8, 8, 16)] * 4)[None], square(12, 12, 16)[None]
    contradiction = label_parts(votes, 4, truth).contradiction[0]
    bad = label_parts(votes, 4, truth, dice_median=np.array([0.1])).label_suspicion[0]
    good = label_parts(votes, 4, truth, dice_median=np.array([0.9])).label_suspicion[0]
    assert bad == pytest.approx(np.sqrt(contradiction * 0.9)) and good == pytest.approx(np.sqrt(contradiction * 0.1))


def test_models_that_agree_with_the_mask_score_zero():
    pet = square(8, 8, 16)
    got = parts(votes_of(*[pet] * 4), 4, pet)
    assert got == {"label_suspicion": 0.0, "consensus_dice": 1.0, "agreement": 1.0, "contradiction": 0.0}


def test_an_empty_mask_that_every_model_leaves_empty_scores_zero():
    empty = np.zeros((S, S), bool)
    got = parts(votes_of(*[empty] * 4), 4, empty)
    assert got == {"label_suspicion": 0.0, "consensus_dice": 1.0, "agreement": 1.0, "contradiction": 0.0}


def test_fewer_than_min_trials_give_no_score():
    pet = square(8, 8, 16)
    few = MIN_TRIALS - 1
    p = label_parts(votes_of(*[pet] * few)[None], np.array([few]), np.zeros((1, S, S), bool))
    assert all(np.isnan(getattr(p, name)[0]) for name in ("label_suspicion", "consensus_dice", "agreement",
                                                           "contradiction"))
    enough = label_parts(votes_of(*[pet] * MIN_TRIALS)[None], MIN_TRIALS, np.zeros((1, S, S), bool))
    assert enough.label_suspicion[0] == 1.0


def test_a_batch_scores_each_image_as_alone():
    truth = np.stack([square(8, 8, 16), np.zeros((S, S), bool)])
    votes = np.stack([votes_of(*[square(8, 8, 16)] * 3), votes_of(*[square(8, 8, 16)] * 3)])
    batch = label_parts(votes, np.array([3, 3]), truth)
    assert batch.label_suspicion.tolist() == [0.0, 1.0]


def test_votes_round_trip_through_their_stored_form():
    rng = np.random.default_rng(0)
    for most in (1, 255, 300, 65535):  # one byte a pixel up to 255 trials, two beyond
        votes = rng.integers(0, most + 1, (17, 23))
        votes[0, 0] = most
        assert decode_votes(encode_votes(votes)).tolist() == votes.tolist()
    assert len(encode_votes(np.zeros((256, 256), int))) < 1000  # zlib: an unanimous image costs little
    with pytest.raises(ValueError):
        encode_votes(np.full((2, 2), 70000))


def lesion_image(mask: np.ndarray) -> np.ndarray:
    """An RGB image, mid-grey with a little noise, darker where `mask` is: the lesion the mask outlines."""
    noise = np.random.default_rng(3).normal(0, 6, (S, S, 1))
    return np.clip(np.where(mask[..., None], 70, 150) + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)


def test_edge_contrast_is_high_where_a_mask_follows_an_edge_in_the_image_and_0_without_an_edge():
    from core.labels import edge_contrast

    lesion = square(8, 8, 12)
    image = lesion_image(lesion)
    follows = edge_contrast(image, lesion)
    assert follows > 5  # 80 grey levels apart, noise 6
    assert edge_contrast(image, square(12, 12, 12)) < follows / 2  # shifted: grey on both sides of half its edge
    assert edge_contrast(image, square(4, 4, 20)) < follows / 2  # grown: its edge runs through plain grey
    assert edge_contrast(image, np.zeros((S, S), bool)) == 0.0 and edge_contrast(image, np.ones((S, S), bool)) == 0.0


def test_image_evidence_sides_with_the_mask_that_follows_the_image():
    from core.labels import EVIDENCE_PRIOR, edge_contrast, image_evidence

    lesion, grown = square(8, 8, 12), square(4, 4, 20)
    image = lesion_image(lesion)
    assert image_evidence(image, grown, lesion) > 1.5  # the models outline the lesion, the mask does not: a label error
    assert image_evidence(image, lesion, grown) < 0.5  # the mask outlines it and the models miss: a hard image
    assert image_evidence(image, lesion, lesion) == 1.0
    erased = image_evidence(image, np.zeros((S, S), bool), lesion)
    c = edge_contrast(image, lesion)
    assert erased == pytest.approx(2 * (c + EVIDENCE_PRIOR) / (c + 2 * EVIDENCE_PRIOR))


def test_the_score_weighs_the_image_evidence_and_counts_a_missing_image_as_neutral():
    lesion, grown = square(8, 8, 12), square(4, 4, 20)
    votes, truth = votes_of(*[lesion] * 4)[None], grown[None]
    plain = label_parts(votes, 4, truth)
    weighed = label_parts(votes, 4, truth, images=[lesion_image(lesion)])
    assert np.isnan(plain.image_evidence[0]) and weighed.image_evidence[0] > 1.5
    assert weighed.label_suspicion[0] == pytest.approx(plain.label_suspicion[0] * weighed.image_evidence[0])
    assert label_parts(votes, 4, truth, images=[None]).label_suspicion[0] == plain.label_suspicion[0]


def test_the_majority_is_half_the_trials_or_more_and_a_bytes_count_never_wraps():
    votes = np.array([[0, 1, 2, 200]], np.uint8)
    assert majority(votes, 4).tolist() == [[False, False, True, True]]
    assert majority(votes, 250).tolist() == [[False, False, False, True]]  # 2 x 200 would wrap to 144 in a byte
    assert majority(np.array([0.4, 0.5]), 1).tolist() == [False, True]  # a vote share, as the dashboard shows it


def test_the_score_weighs_the_median_dice_else_the_consensus_dice_and_the_sweeps_typical_entropy():
    assert scored_dice(np.array([0.3, np.nan]), np.array([0.9, 0.6])).tolist() == [0.3, 0.6]
    assert typical_entropy(np.array([0.1, np.nan, 0.3, 0.5])) == 0.3 and np.isnan(typical_entropy(np.array([np.nan])))
    pet = square(8, 8, 16)
    votes = np.stack([votes_of(*[pet] * 4), votes_of(*[pet] * 3, square(0, 0, 4))])
    truth = np.zeros((2, S, S), bool)
    parts = vote_parts(votes, 4, truth)
    entropy, dice = np.array([0.2, 0.4]), np.array([np.nan, 0.1])
    together = label_parts(votes, 4, truth, entropy=entropy, dice_median=dice)
    assert score_parts(parts, entropy, dice).tolist() == together.label_suspicion.tolist()
    # the erased mask's models: consensus dice 0 stands in for the missing median; typical 0.3 of the two
    assert together.label_suspicion[0] == pytest.approx(np.sqrt(parts.contradiction[0]) * (0.8 / 0.7) ** 2)


# -- benchmarks/label_errors.py: its planting and its scoring, on tiny constructed cases -----------------

def test_the_benchmark_plants_errors_of_the_sizes_it_promises():
    from benchmarks._planting import grow, planted_mask, shift, shrink

    pet = square(10, 10, 8)
    assert 1.8 <= grow(pet).sum() / pet.sum() <= 2.6 and (grow(pet) & pet).sum() == pet.sum()
    assert 0.3 <= shrink(pet).sum() / pet.sum() <= 0.6 and not (shrink(pet) & ~pet).any()
    moved = shift(pet)
    assert moved.sum() == pet.sum() and (moved & pet).sum() <= pet.sum() / 4
    assert not planted_mask("erased", pet, pet).any()
    other = np.zeros((2 * S, 2 * S), bool)
    other[:S] = True
    assert planted_mask("swapped", pet, other).tolist() == (np.arange(S)[:, None] < S // 2).repeat(S, 1).tolist()


def test_the_benchmark_measures_auroc_and_precision_among_the_top_k():
    from benchmarks.label_errors import auroc, precision_at_k

    planted = np.array([True, True, False, False, False])
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), planted) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8, 0.7]), planted) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5, 0.5]), planted) == 0.5  # ties count half
    assert auroc(np.array([np.nan, 0.9, 0.1, 0.2, 0.3]), planted) == 0.5  # no score ranks last
    assert precision_at_k(np.array([0.9, 0.1, 0.8, 0.2, 0.3]), planted, 2) == 0.5


def ten_test_images(db_url: str, tmp_path):
    """A store with ten S x S test images im0..im9 registered: the store, their names and ids."""
    from types import SimpleNamespace

    from core.store.db import Store

    store = Store(db_url)
    names = [f"im{k}" for k in range(10)]
    infos = [SimpleNamespace(name=n, split="test", breed="b", species="cat", width=S, height=S, brightness=0.5,
                             fg_fraction=0.3) for n in names]
    ids = store.register_dataset("synthetic/b", "synthetic", tmp_path, infos)
    return store, names, np.array([ids[n] for n in names])


def test_the_benchmark_scores_a_store_and_judges_the_suspect_label_ranking(close_trial, db_url, tmp_path, capsys):
    from benchmarks.label_errors import judge, mask_dice, read_sweep, store_rankings, table

    store, names, image_ids = ten_test_images(db_url, tmp_path)
    truth = np.stack([square(8, 8, 16)] * 10)
    truth[0] = False               # planted: erased
    truth[1] = square(16, 16, 16)  # planted: shifted
    store.record_truths(image_ids, S, truth)
    rng = np.random.default_rng(0)
    for number in range(3):
        pred = np.stack([square(8, 8, 16)] * 10)
        pred[5] = rng.random((S, S)) < 0.5  # a hard image: every model guesses differently
        close_trial(store, "b", number, image_ids, mask_dice(pred, truth), dataset="synthetic/b", image_size=S,
                    masks=pred)
    store.dispose()
    scores = store_rankings(read_sweep(db_url, "b", names), truth)
    scores["cleanlab soft-minimum"] = np.full(10, np.nan)  # not measured here: ranks everything alike
    planted = {"im0": "erased", "im1": "shifted"}
    rankings = table(scores, names, planted)
    assert [r.name for r in rankings] == ["suspect-label score", "median dice", "cleanlab soft-minimum"]
    assert rankings[0].auroc == 1.0 and rankings[0].precision == 1.0
    # median dice from the masks: the hard image's coin tosses (about 0.33) beat the planted masks' 0 and 0.25
    assert rankings[1].auroc == 1.0 and rankings[2].auroc == 0.5
    assert judge("tiny", rankings, 0.95, "AUROC") == [True, False, True]  # a tie with median dice is no lead
    out = capsys.readouterr().out
    assert "PASS  tiny: suspect-label AUROC: 1 (target >= 0.95)" in out
    assert "MISS  tiny: suspect-label AUROC - median dice AUROC: 0 " in out
    assert "im0 erased 1/1/-; im1 shifted 2/2/-" in out  # its ranks; no cleanlab score


def test_the_benchmark_plants_in_busis_layout_and_removes_one_object_of_two(tmp_path):
    from benchmarks._planting import DatasetMasks, plant

    _, names = ten_lesions(tmp_path)
    layout = DatasetMasks(tmp_path, names, files=True)
    assert layout.kind == "folder" and layout.objects("benign/benign (3)") == 2
    assert layout.read("benign/benign (3)").sum() == square(7, 4, 8).sum() + square(20, 20, 6).sum()
    kinds = plant(layout, names, 0.2, seed=0)
    assert len(kinds) == 2 and kinds["benign/benign (3)"] == "object removed"
    again = DatasetMasks(tmp_path, names)  # the files as the loader now reads them
    assert again.objects("benign/benign (3)") == 1 and again.read("benign/benign (3)").sum() == square(7, 4, 8).sum()
    [(other, kind)] = [(n, k) for n, k in kinds.items() if n != "benign/benign (3)"]
    assert kind == "erased" and not again.read(other).any()


def close_three_trials(close_trial, store, image_ids, clean: np.ndarray, truth: np.ndarray, rng,
                       entropy: tuple[float, float]) -> list[np.ndarray]:
    """Three complete trials of sweep 'b' that predict the clean masks, but for image 5, a hard image where every
    model guesses differently; their entropies drawn from `entropy`. Closes the store; returns the predictions."""
    from benchmarks.label_errors import mask_dice
    from core.metrics import mask_diagnostics

    size, preds = clean.shape[-1], []
    for number in range(3):
        pred = clean.copy()
        pred[5] = rng.random((size, size)) < 0.5
        preds.append(pred)
        dice = mask_dice(pred, truth)
        diagnostics = mask_diagnostics(pred, truth)
        diagnostics.entropy = rng.uniform(*entropy, len(clean))
        close_trial(store, "b", number, image_ids, dice, dataset="synthetic/b", image_size=size, masks=pred,
                    diagnostics=diagnostics)
    store.dispose()
    return preds


def test_the_benchmark_rescores_one_sweeps_store_against_any_planting_and_checks_the_stored_score(
        close_trial, db_url, tmp_path):
    from benchmarks.label_errors import check_reproduces, mask_dice, over_plantings, read_sweep, store_rankings

    store, names, image_ids = ten_test_images(db_url, tmp_path)
    clean = np.stack([square(8, 8, 16)] * 10)
    truth = clean.copy()
    truth[0] = False               # the sweep's planting: erased
    truth[1] = square(16, 16, 16)  # and shifted
    store.record_truths(image_ids, S, truth)
    preds = close_three_trials(close_trial, store, image_ids, clean, truth, np.random.default_rng(0), entropy=(0.1, 0.6))
    sweep = read_sweep(db_url, "b", names)
    assert sweep.masks.tolist() == np.stack(preds).tolist() and sweep.truth.tolist() == truth.tolist()
    check_reproduces(sweep, truth)  # the store's own label_suspicion, recomputed from its masks and entropies
    assert min(sweep.suspicion[[0, 1]]) > 0.7 > 0.4 > max(np.delete(sweep.suspicion, [0, 1]))
    # against the clean masks nothing is planted: the models agree with every mask but the hard image's
    again = store_rankings(sweep, clean)
    assert again["suspect-label score"][[0, 1]].tolist() == [0.0, 0.0]
    assert again["median dice"] == pytest.approx(1 - np.median(mask_dice(np.stack(preds), clean[None]), axis=0))
    other = clean.copy()
    other[3] = False  # another planting: image 3 erased
    spreads = over_plantings(lambda t: store_rankings(sweep, t),
                             [(truth, np.arange(10) < 2), (other, np.arange(10) == 3)])
    assert [s.name for s in spreads] == ["suspect-label score", "median dice"]
    assert spreads[0].aurocs.tolist() == [1.0, 1.0] and spreads[0].precision == 1.0
    assert spreads[1].auroc == pytest.approx(np.mean(spreads[1].aurocs)) and spreads[1].interval[0] <= spreads[1].auroc
    sweep.suspicion[4] += 0.01  # a store whose score is not the one recomputed: the figures would mislead
    with pytest.raises(RuntimeError, match="label_suspicion of im4"):
        check_reproduces(sweep, truth)
    with pytest.raises(RuntimeError, match="stored truth of 1 images, e.g. im0"):
        check_reproduces(sweep, np.where(np.arange(10)[:, None, None] == 0, clean, truth))


def test_the_benchmark_recomputes_the_stored_score_of_images_larger_than_the_vote_grid(close_trial, db_url, tmp_path):
    """Above VOTE_GRID a side the store scores votes, truth and image on the grid; the replay must do the same
    (it once passed full-size votes beside grid-size images, and failed on every sweep above 64 px)."""
    from benchmarks.label_errors import check_reproduces, read_sweep

    size = 2 * VOTE_GRID + 6  # stride 3: the grid is not the image
    store, names, image_ids = ten_test_images(db_url, tmp_path)
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:size, :size]
    clean = np.stack([(rows - 40 - 3 * k) ** 2 + (cols - 50) ** 2 < (20 + k) ** 2 for k in range(10)])
    truth = clean.copy()
    truth[0] = False                              # planted: erased
    truth[1] = np.roll(clean[1], 45, axis=1)      # and shifted
    photos = (np.where(clean[..., None], 60, 170) + rng.integers(0, 40, (10, size, size, 3))).astype(np.uint8)
    store.record_truths(image_ids, size, truth, photos)
    close_three_trials(close_trial, store, image_ids, clean, truth, rng, entropy=(0.1, 0.3))
    sweep = read_sweep(db_url, "b", names)
    assert sweep.truth.shape == (10, size, size) and sweep.images[0].shape == (*on_grid(truth[0]).shape, 3)
    check_reproduces(sweep, truth)  # the stored label_suspicion, recomputed on the grid: identical
    assert min(sweep.suspicion[[0, 1]]) > 0.7 > 0.4 > max(np.delete(sweep.suspicion, [0, 1]))


def ten_lesions(root):
    """A BUSI-layout folder of ten S x S images with one-lesion masks, benign (3) with a second lesion: its layout
    (read only) and names."""
    from PIL import Image

    from benchmarks._planting import DatasetMasks

    for folder in ("images", "mask"):
        (root / "benign" / folder).mkdir(parents=True)
    names = [f"benign/benign ({k})" for k in range(1, 11)]
    for k in range(1, 11):
        Image.fromarray(np.full((S, S, 3), 20 * k, np.uint8)).save(root / "benign" / "images" / f"benign ({k}).png")
        Image.fromarray(square(4 + k, 4, 8 + k % 3)).save(root / "benign" / "mask" / f"benign ({k})_mask.png")  # 1-bit
    Image.fromarray(square(20, 20, 6)).save(root / "benign" / "mask" / "benign (3)_mask_1.png")
    return DatasetMasks(root, names), names


def test_the_benchmark_plants_in_memory_as_it_plants_files_and_leaves_the_files_alone(tmp_path):
    from benchmarks._planting import DatasetMasks, as_scored, plant, planted_truths

    files, names = ten_lesions(tmp_path)
    clean = np.stack([as_scored(files.read(n), (S, S), 16) for n in names])
    truth, kinds = planted_truths(files, names, [(S, S)] * 10, clean, 16, 0.3, seed=2)
    assert files.objects("benign/benign (3)") == 2 and DatasetMasks(tmp_path, names).objects("benign/benign (3)") == 2
    assert len(kinds) == 3 and kinds["benign/benign (3)"] == "object removed"
    assert plant(DatasetMasks(tmp_path, names, files=True), names, 0.3, seed=2) == kinds  # on the files: the same plants
    planted = DatasetMasks(tmp_path, names)
    assert truth.tolist() == [as_scored(planted.read(n), (S, S), 16).tolist() for n in names]


def test_successive_plantings_start_the_kinds_one_further_along_so_every_kind_is_planted(tmp_path):
    from benchmarks._planting import KINDS, plant

    files, names = ten_lesions(tmp_path)
    # 3 planted, one of them the removed object: two kinds a planting, as on BUSI, where starting every planting
    # at the first kind never planted the last ones
    plantings = [plant(files.in_memory(), names, 0.3, seed=5, first_kind=j) for j in range(len(KINDS))]
    assert [sorted(k for k in p.values() if k != "object removed") for p in plantings] == \
        [sorted((KINDS[j], KINDS[(j + 1) % len(KINDS)])) for j in range(len(KINDS))]
    assert plantings[0] == plant(files.in_memory(), names, 0.3, seed=5)  # the sweep's own planting as before


def test_the_vote_grid_keeps_every_pixel_up_to_64_px_and_a_fixed_stride_above():
    rng = np.random.default_rng(1)
    for side, step in ((24, 1), (64, 1), (65, 2), (128, 2), (256, 4), (300, 5)):
        mask = rng.random((side, side)) < 0.5
        cells = on_grid(mask)
        assert cells.tolist() == mask[::step, ::step].tolist() and max(cells.shape) <= VOTE_GRID
        assert on_grid(cells) is cells  # on the grid already: votes sliced once stay as they are
    small = rng.random((64, 64)) < 0.5
    assert on_grid(small) is small  # the quick preset's 64 px: the image itself, every part exact
    votes = rng.integers(0, 9, (256, 256))  # an older version's full-size counts: sliced like the masks
    assert on_grid(votes).tolist() == votes[::4, ::4].tolist()


def test_a_vote_added_past_255_trials_widens_the_counts_instead_of_wrapping():
    votes = np.full((2, 3), 254, np.uint8)
    once = add_vote(votes, np.ones((2, 3), bool), 254)
    assert once.dtype == np.uint8 and once.max() == 255
    twice = add_vote(once, np.array([[True, False, True], [False, False, False]]), 255)
    assert twice.dtype == np.uint16 and twice.tolist() == [[256, 255, 256], [255, 255, 255]]
    stored = decode_votes(encode_votes(twice))
    assert stored.dtype == np.uint16 and stored.tolist() == twice.tolist()
    assert decode_votes(encode_votes(once)).dtype == np.uint8
