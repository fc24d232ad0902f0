"""The suspect-label score in the store: votes and label columns kept up to date as trials close equal a
rebuild from every stored mask; truths stored once; the dashboard's reads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import select, update

from core.labels import decode_votes, encode_votes, label_parts
from core.metrics import mask_diagnostics
from core.store import schema as st
from core.store import queries, summaries, suspicion
from core.store.db import Store

S = 24
N = 6


def _square(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((S, S), bool)
    top, left, side = rng.integers(0, 8), rng.integers(0, 8), rng.integers(6, 14)
    mask[top:top + side, left:left + side] = True
    return mask


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Store:
    store = Store(db_url)
    infos = [SimpleNamespace(name=f"im{k}", split="test", breed="b", species="cat", width=S, height=S, brightness=0.5,
                             fg_fraction=0.3) for k in range(N)]
    store.ids = store.register_dataset("synthetic/t", "synthetic", tmp_path, infos)  # type: ignore[attr-defined]
    yield store
    store.dispose()


def _ids(store: Store) -> np.ndarray:
    return np.array([store.ids[f"im{k}"] for k in range(N)])  # type: ignore[attr-defined]


def _close(close_trial, store: Store, sweep: str, number: int, masks: np.ndarray | None, state: str = "complete",
           images: slice = slice(None)) -> int:
    ids = _ids(store)[images]
    dice = np.linspace(0.2, 0.9, len(ids))
    shown = masks[images] if masks is not None else np.zeros((len(ids), S, S), bool)
    diagnostics = mask_diagnostics(shown, shown)  # with the models' entropy per image, as an evaluation measures it
    diagnostics.entropy = np.random.default_rng(number).uniform(0.05, 0.6, len(ids))
    return close_trial(store, sweep, number, ids, dice, dataset="synthetic/t", image_size=S, state=state,
                       masks=None if masks is None else masks[images], diagnostics=diagnostics)


def _label_rows(store: Store, sweep: str) -> tuple[dict, dict]:
    s, v = st.sweep_images, st.sweep_image_votes
    with store.engine.connect() as conn:
        labels = {r.image_id: tuple(r[1:]) for r in conn.execute(
            select(s.c.image_id, *(s.c[c] for c in suspicion.LABEL_COLUMNS)).where(s.c.sweep == sweep))}
        votes = {r.image_id: (r.trials, decode_votes(r.votes).tolist()) for r in conn.execute(
            select(v.c.image_id, v.c.trials, v.c.votes).where(v.c.sweep == sweep))}
    return labels, votes


@pytest.mark.parametrize("chunk", [suspicion.CHUNK, 4], ids=["one chunk", "chunks of 4 images"])
def test_votes_and_label_columns_kept_as_trials_close_equal_a_rebuild_from_every_mask(store: Store, chunk: int,
                                                                                      close_trial, monkeypatch) -> None:
    monkeypatch.setattr(suspicion, "CHUNK", chunk)
    rng = np.random.default_rng(1)
    truths = np.stack([_square(rng) for _ in range(N)])
    ids = _ids(store)
    store.record_truths(ids[:-1], S, truths[:-1])  # the last image has no stored truth: no score
    masks = []
    for number in range(6):
        pred = np.stack([_square(rng) for _ in range(N)])
        pred[0] = truths[0]                       # every model agrees with the mask
        pred[1] = np.roll(truths[1], 8, axis=1)   # every model agrees against the mask
        masks.append(pred)
        # trial 3 evaluates only some images, trial 4 stores no masks (its entropy moves the score), trial 5
        # is pruned with nothing
        _close(close_trial, store, "s", number, None if number == 4 else pred, state="pruned" if number == 5 else "complete",
               images=slice(0, 4) if number == 3 else slice(None))
        if number == 0:  # one vote: no score yet
            labels, votes = _label_rows(store, "s")
            assert votes[int(ids[0])][0] == 1 and all(v[0] is None for v in labels.values())
    _close(close_trial, store, "other", 0, masks[0])  # another sweep's votes are its own
    kept = _label_rows(store, "s")
    with store.engine.begin() as conn:
        summaries.rebuild(conn, "s")
        suspicion.rebuild(conn, "s")
    assert _label_rows(store, "s") == kept

    labels, votes = kept
    counted = {k: [0, 1, 2, 3] if k < 4 else [0, 1, 2] for k in range(N)}
    measured = {k: [*counted[k], 4] for k in range(N)}  # trial 4 stored no masks; its entropy and dice count
    entropy = [np.median([np.random.default_rng(j).uniform(0.05, 0.6, 4 if j == 3 else N)[k] for j in measured[k]])
               for k in range(N)]
    typical = np.median(entropy)  # the sweep's typical image, the last one (no truth) included
    for k, image_id in enumerate(ids.tolist()):
        expected = np.sum([masks[j][k] for j in counted[k]], axis=0)
        assert votes[image_id] == (len(counted[k]), expected.tolist())
        if k == N - 1:
            assert labels[image_id] == (None, None, None, None)
            continue
        dice = np.median([np.linspace(0.2, 0.9, 4 if j == 3 else N)[k] for j in measured[k]])
        parts = label_parts(expected[None], len(counted[k]), truths[k][None], np.array([entropy[k]]), np.array([dice]),
                            typical=typical)
        assert labels[image_id] == pytest.approx(tuple(float(getattr(parts, c)[0]) for c in suspicion.LABEL_COLUMNS))
    assert labels[int(ids[0])][0] == 0.0 and labels[int(ids[1])][0] > 0.2


def test_the_ranking_puts_the_most_suspect_label_first_and_unscored_images_last(close_trial, store: Store) -> None:
    rng = np.random.default_rng(2)
    truths = np.stack([_square(rng) for _ in range(N)])
    ids = _ids(store)
    store.record_truths(ids[1:], S, truths[1:])  # im0 has no truth
    for number in range(3):
        pred = truths.copy()
        pred[3] = False  # the models agree the object is not there: im3's mask is suspect
        _close(close_trial, store, "s", number, pred)
    ranked = queries.suspects(store, "s")
    assert list(ranked.columns) == list(queries.SUSPECT_COLUMNS)
    assert ranked["name"].iloc[0] == "im3" and ranked["contradiction"].iloc[0] == 1.0
    dice_median = ranked["dice_median"].iloc[0]  # every trial's dice for im3 (the fixture's, not measured)
    typical = np.median([_entropy(store, k) for k in range(N)])
    certainty = (1 - _entropy(store, 3)) / (1 - typical)  # against the sweep's typical image
    assert ranked["label_suspicion"].iloc[0] == pytest.approx(np.sqrt(1 - dice_median) * certainty ** 2)
    assert ranked["name"].iloc[-1] == "im0" and np.isnan(ranked["label_suspicion"].iloc[-1])
    assert (ranked["trials"] == 3).all() and len(queries.suspects(store, "s", limit=2)) == 2
    assert queries.consensus(store, "s", int(ids[3])).max() == 0.0
    assert queries.consensus(store, "s", int(ids[2])).tolist() == truths[2].astype(float).tolist()
    assert queries.consensus(store, "nope", int(ids[2])) is None
    assert queries.truth_mask(store, int(ids[2]), S).tolist() == truths[2].tolist()
    assert queries.truth_mask(store, int(ids[0]), S) is None and queries.truth_mask(store, int(ids[2]), 64) is None
    assert queries.has_label_suspicion(store) and queries.has_label_suspicion(store.engine)


def test_a_close_weighs_each_label_by_its_stored_image_and_a_late_image_fills_a_truth_stored_without_one(
        close_trial, store: Store, monkeypatch) -> None:
    from core.store import db as db_module
    from core.store.mask_png import decode_image

    rng = np.random.default_rng(4)
    objects = np.stack([_square(rng) for _ in range(N)])
    images = np.where(objects[..., None], 60, 160).astype(np.uint8).repeat(3, axis=3)
    truths = objects.copy()
    truths[1] = np.roll(objects[1], 6, axis=1)  # a wrong mask: the models outline the object, the image backs them
    ids = _ids(store)
    store.record_truths(ids[:3], S, truths[:3])  # stored before images were: NULL, filled by the next write
    store.record_truths(ids, S, truths, images)
    with store.engine.connect() as conn:
        stored = dict(conn.execute(select(st.truth_masks.c.image_id, st.truth_masks.c.image)).all())
    assert all(decode_image(stored[int(i)]).tolist() == images[k].tolist() for k, i in enumerate(ids))
    encoded = []
    monkeypatch.setattr(db_module, "encode_image", lambda image: encoded.append(image) or b"")
    store.record_truths(ids, S, truths, images)  # every later trial records them again: nothing is encoded
    assert encoded == []
    hard = np.roll(objects[2], 6, axis=0)  # im2: the models agree on a wrong outline; the mask follows the image
    for number in range(3):
        pred = objects.copy()
        pred[2] = hard
        _close(close_trial, store, "s", number, pred)
    ranked = queries.suspects(store, "s").set_index("name")
    with store.engine.connect() as conn:
        evidence = dict(conn.execute(select(st.sweep_images.c.image_id, st.sweep_images.c.image_evidence)).all())
    entropy = np.array([_entropy(store, k) for k in range(N)])
    for k, image_id in enumerate(ids.tolist()):
        votes = 3 * (hard if k == 2 else objects[k]).astype(int)
        want = label_parts(votes[None], 3, truths[k][None], entropy[k:k + 1], np.array([ranked.loc[f"im{k}", "dice_median"]]),
                           typical=float(np.median(entropy)), images=[images[k]])
        assert evidence[image_id] == pytest.approx(want.image_evidence[0])
        assert ranked.loc[f"im{k}", "label_suspicion"] == pytest.approx(want.label_suspicion[0])
    assert evidence[int(ids[1])] > 1.5 and evidence[int(ids[2])] < 0.5 and evidence[int(ids[0])] == 1.0
    kept = _label_rows(store, "s")  # the third close kept the evidence of the second (the same majority masks)
    with store.engine.begin() as conn:
        summaries.rebuild(conn, "s")
        suspicion.rebuild(conn, "s")
    assert _label_rows(store, "s") == kept


def _entropy(store: Store, k: int) -> float:
    s = st.sweep_images
    with store.engine.connect() as conn:
        return float(conn.execute(select(s.c.entropy_median).where(s.c.image_id == int(_ids(store)[k]))).scalar())


def test_truths_are_stored_once_even_when_two_workers_write_them_at_once(store: Store) -> None:
    rng = np.random.default_rng(3)
    first = np.stack([_square(rng) for _ in range(N)])
    ids = _ids(store)
    with ThreadPoolExecutor(3) as pool:  # three workers, each writing the same truths five times; errors re-raise
        list(pool.map(lambda _: [store.record_truths(ids, S, first) for _ in range(5)], range(3)))
    store.record_truths(ids, S, ~first)  # written already: the first truth stays
    assert store.count(st.truth_masks) == N
    assert all(queries.truth_mask(store, int(i), S).tolist() == first[k].tolist() for k, i in enumerate(ids))


def test_a_trial_run_records_the_truth_it_was_scored_against(close_trial, db_url: str, tmp_path: Path, monkeypatch) -> None:
    from core.data.dataset import prepare_dataset
    from core.data.synthetic import generate_synthetic
    from core.models.registry import build_model
    from core.training import trial
    from core.training.loop import FitResult, TrainConfig

    root = tmp_path / "syn"
    generate_synthetic(root, n_images=24, image_size=32, seed=0)
    data = prepare_dataset(root, 32, log=lambda _: None)
    store = Store(db_url)
    ids = trial.register(store, data)
    cfg = TrainConfig(arch="unet", width=0.25, image_size=32, epochs=1, batch_size=8, device="cpu", num_workers=0,
                      channels_last=False, amp="off")
    # training is not what is tested: an untrained network, evaluated and recorded as run_trial does
    monkeypatch.setattr(trial, "fit", lambda cfg, *a, **k: FitResult(build_model("unet", width=0.25), 0.5, 0, 1, [],
                                                                    None, "cpu", "off"))
    for number in range(3):
        trial.run_trial(store, cfg, data, ids, sweep="s", study="s/unet", number=number, progress=False,
                        log=lambda _: None)
    test = data.indices("test")
    from core.store.mask_png import decode_image

    with store.engine.connect() as conn:
        images = dict(conn.execute(select(st.truth_masks.c.image_id, st.truth_masks.c.image)).all())
        evidence = conn.execute(select(st.sweep_images.c.image_evidence)).scalars().all()
    for i in test:
        image_id = ids[data.infos[i].name]
        assert queries.truth_mask(store, image_id, 32).tolist() == data.masks[i].astype(bool).tolist()
        assert decode_image(images[image_id]).tolist() == data.images[i].tolist()  # the image as scored, for evidence
    ranked = queries.suspects(store, "s")
    assert len(ranked) == len(test) and ranked["label_suspicion"].notna().all() and (ranked["trials"] == 3).all()
    assert len(evidence) == len(test) and all(e is not None and 0 < e < 2 for e in evidence)
    store.dispose()


# -- 256 px: the votes on the 64-cell grid ---------------------------------------------------------------

BIG = 256  # masks of this size keep their votes on every 4th pixel of every 4th row (core.labels.VOTE_GRID 64)


def _rect(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((BIG, BIG), bool)
    mask[top:bottom, left:right] = True
    return mask


@pytest.fixture
def big(db_url: str, tmp_path: Path) -> Store:
    store = Store(db_url)
    infos = [SimpleNamespace(name=f"big{k}", split="test", breed="b", species="cat", width=BIG, height=BIG,
                             brightness=0.5, fg_fraction=0.3) for k in range(3)]
    store.ids = store.register_dataset("synthetic/big", "synthetic", tmp_path, infos)  # type: ignore[attr-defined]
    store.record_truths(_big_ids(store), BIG, np.stack([_rect(0, 128, 0, 128)] * 3))
    yield store
    store.dispose()


def _big_ids(store: Store) -> np.ndarray:
    return np.array([store.ids[f"big{k}"] for k in range(3)])  # type: ignore[attr-defined]


def _big_masks(number: int) -> np.ndarray:
    """Trial `number`'s masks: big0 the truth shifted 66 px right by every model (an edge between grid columns),
    big1 the truth itself, big2 a square that moves from trial to trial (split votes)."""
    return np.stack([_rect(0, 128, 66, 194), _rect(0, 128, 0, 128), _rect(30 + 7 * number, 150, 41, 171 - 5 * number)])


def _close_big(close_trial, store: Store, number: int, masks: np.ndarray | None = None) -> None:
    masks = _big_masks(number) if masks is None else masks
    dice = np.array([0.3, 0.9, 0.5]) + 0.01 * number
    diagnostics = mask_diagnostics(masks, masks)
    diagnostics.entropy = np.array([0.1, 0.2, 0.6]) + 0.02 * number
    close_trial(store, "big", number, _big_ids(store), dice, dataset="synthetic/big", image_size=BIG, masks=masks,
                diagnostics=diagnostics)


def _big_rows(store: Store) -> tuple[dict, dict]:
    s, v = st.sweep_images, st.sweep_image_votes
    with store.engine.connect() as conn:
        labels = {r.image_id: tuple(r[1:]) for r in conn.execute(
            select(s.c.image_id, *(s.c[c] for c in suspicion.LABEL_COLUMNS), s.c.dice_median, s.c.entropy_median)
            .where(s.c.sweep == "big"))}
        votes = {r.image_id: (r.trials, decode_votes(r.votes)) for r in conn.execute(
            select(v.c.image_id, v.c.trials, v.c.votes).where(v.c.sweep == "big"))}
    return labels, votes


def test_a_256_px_close_keeps_votes_on_the_64_grid_and_scores_the_subsampled_masks(close_trial, big: Store) -> None:
    for number in range(3):
        _close_big(close_trial, big, number)
    labels, votes = _big_rows(big)
    ids = _big_ids(big).tolist()
    truth = _rect(0, 128, 0, 128)
    total = np.sum([_big_masks(j) for j in range(3)], axis=0)
    for k, image_id in enumerate(ids):
        trials, counts = votes[image_id]
        assert trials == 3 and counts.shape == (64, 64) and counts.tolist() == total[k][::4, ::4].tolist()
    # big0 by hand on the grid: columns 68..192 of the models against 0..124 of the mask, 32 rows each; the
    # overlap is 15 of 32 columns (62 of 128 px at full size: 0.484), 34 of 49 united columns unanimous against
    # the mask (132 of 194 px: 0.680)
    dice0, agreement0, contradiction0 = labels[ids[0]][1:4]
    assert dice0 == pytest.approx(15 / 32) and agreement0 == 1.0 and contradiction0 == pytest.approx(34 / 49)
    assert labels[ids[1]][1:4] == (1.0, 1.0, 0.0)  # every model draws the mask: nothing against it
    entropy = np.array([labels[i][5] for i in ids])
    expected = label_parts([total[k][::4, ::4] for k in range(3)], 3, [truth[::4, ::4]] * 3, entropy,
                           np.array([labels[i][4] for i in ids]), typical=float(np.median(entropy)))
    for k, image_id in enumerate(ids):
        want = tuple(float(getattr(expected, c)[k]) for c in suspicion.LABEL_COLUMNS)
        assert labels[image_id][:4] == pytest.approx(want)
    # the dashboard's consensus is drawn at the image's size, from the masks themselves
    assert queries.consensus(big, "big", ids[2]).tolist() == (total[2] / 3).tolist()


def test_older_full_size_votes_are_sliced_to_the_grid_and_the_next_close_adds_to_them(close_trial, big: Store) -> None:
    for number in range(2):
        _close_big(close_trial, big, number)
    v = st.sweep_image_votes
    old = np.sum([_big_masks(j) for j in range(2)], axis=0)
    with big.engine.begin() as conn:  # as an older version stored them: every pixel's count, 256 x 256
        for k, image_id in enumerate(_big_ids(big).tolist()):
            conn.execute(update(v).where(v.c.sweep == "big", v.c.image_id == image_id)
                         .values(votes=encode_votes(old[k])))
    assert _big_rows(big)[1][int(_big_ids(big)[0])][1].shape == (BIG, BIG)
    _close_big(close_trial, big, 2)
    kept = _big_rows(big)
    total = old + _big_masks(2)
    for k, image_id in enumerate(_big_ids(big).tolist()):
        trials, counts = kept[1][image_id]
        assert trials == 3 and counts.tolist() == total[k][::4, ::4].tolist()
    with big.engine.begin() as conn:
        summaries.rebuild(conn, "big")
        suspicion.rebuild(conn, "big")  # from every stored mask: the same counts and scores
    rebuilt = _big_rows(big)
    assert rebuilt[0] == kept[0]
    as_lists = lambda votes: {i: (n, c.tolist()) for i, (n, c) in votes.items()}  # noqa: E731
    assert as_lists(rebuilt[1]) == as_lists(kept[1])
