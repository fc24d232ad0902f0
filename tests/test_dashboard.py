"""The dashboard pages, run headless with streamlit.testing (AppTest), on a demo sweep and on
stores with nothing to show; plus the picture and statistics helpers the pages rely on."""
from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from scipy import stats as sps
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from core.store.optuna_storage import optuna_storage
from core.store.db import ImageResults, Store
from dashboard import images, stats
from dashboard.demo_store import DemoStore, FolderDemo

DASH = Path(__file__).resolve().parents[1] / "dashboard"
PAGES = {
    "home": "Home.py",
    "curves": "pages/1_Learning_curves.py",
    "distributions": "pages/2_Dice_distributions.py",
    "hardest": "pages/3_Hardest_images.py",
    "insights": "pages/4_Sweep_insights.py",
    "suspects": "pages/5_Suspect_labels.py",
}
ODD = "odd"  # a one-trial sweep whose images are missing, outside the root, or fine


# -- fixtures ------------------------------------------------------------------------------

class _TestImage:
    """What register_dataset reads of an image: a test image of an odd breed."""

    def __init__(self, name: str):
        self.name, self.split, self.breed, self.species = name, "test", "odd_breed", "cat"
        self.width = self.height = 64
        self.brightness, self.fg_fraction = 0.5, 0.2


def _add_odd_sweep(demo: DemoStore, outside_dir: Path) -> dict[str, int]:
    """Sweep "odd": one unet trial over a good image, a missing one and two that escape the root."""
    (outside_dir / "secret.jpg").parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(outside_dir / "secret.jpg")
    link = demo.root / "images" / "linked_1.jpg"
    link.symlink_to(outside_dir / "secret.jpg")
    escape = os.path.relpath(outside_dir / "secret", demo.root / "images")  # ../../outside/secret
    good = demo.test_images[0]

    store = Store(demo.url)
    ids = store.register_dataset(demo.dataset, "synthetic", demo.root,
                                 [_TestImage(n) for n in ("ghost_1", escape, "linked_1")])
    names = [good, "ghost_1", escape, "linked_1"]
    tid = store.start_trial(sweep=ODD, study=f"{ODD}/unet", arch="unet", number=0, params={"lr": 1e-3}, device="cpu",
                            dataset=demo.dataset, image_size=64)
    store.record_epoch(tid, 0, train_loss=0.5, val_loss=0.6, train_dice=0.7, val_dice=0.6, lr=1e-3, seconds=1.0,
                       images_per_s=10.0)
    dice = np.array([0.9, 0.1, 0.2, 0.3])
    store.finish_trial(tid, state="complete", val_dice=0.6, results=ImageResults(
        np.array([ids[n] for n in names]), dice, dice, dice, masks=[np.ones((64, 64), bool)] * 4))
    study = optuna.create_study(storage=optuna_storage(demo.url, engine=store.engine), study_name=f"{ODD}/unet",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3},
                                              distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2)},
                                              value=0.6))
    store.dispose()
    return {"good": ids[good], "escape": ids[escape], "trial": tid}


@pytest.fixture(scope="module")
def demo_sweeps(demo_sweeps: tuple[DemoStore, FolderDemo],
                tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoStore, FolderDemo]:
    """conftest's demo store (this module's copy), with sweep "odd" added last."""
    _add_odd_sweep(demo_sweeps[0], tmp_path_factory.mktemp("outside"))
    return demo_sweeps


@pytest.fixture(scope="module")
def facts(demo: DemoStore) -> dict:
    """What the pages should show, read straight from the SQLite file (not through core.store.queries)."""
    path = demo.url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        trials = conn.execute("SELECT id, arch, number, state, val_dice FROM trials WHERE sweep = 'demo'").fetchall()
        best = {}
        for tid, arch, number, state, val in trials:
            if state == "complete" and (arch not in best or val > best[arch][1]):
                best[arch] = (tid, val, number)
        results = {tid: conn.execute(
            "SELECT images.name, images.species, dice, dice_no_border FROM image_results JOIN images ON images.id = "
            "image_id WHERE trial_id = ? ORDER BY dice", (tid,)).fetchall() for tid, *_ in trials}
    return {"trials": trials, "best": {a: v[0] for a, v in best.items()},
            "best_number": {a: v[2] for a, v in best.items()}, "results": results}


def app(page: str, monkeypatch: pytest.MonkeyPatch, db: str, **state: object) -> AppTest:
    monkeypatch.setenv("RESULTS_DB", db)
    at = AppTest.from_file(str(DASH / PAGES[page]), default_timeout=90)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown] + [c.value for c in at.caption]


def table_with(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def gallery_count(at: AppTest) -> int:
    found = [re.search(r"\*\*(\d+) images match\*\*", t) for t in texts(at)]
    return int(next(m.group(1) for m in found if m))


def gallery_names(at: AppTest) -> list[str]:
    """Image names in rank order (the gallery fills two columns, so page order is not rank order)."""
    ranked = [(int(m.group(1)), m.group(2)) for t in texts(at) if (m := re.match(r"\*\*(\d+)\. (.+?)\*\*", t))]
    return [name for _, name in sorted(ranked)]


# -- pages on the demo sweep ---------------------------------------------------------------

def test_home_shows_dataset_states_best_trials_and_the_trials_table(demo, facts, monkeypatch) -> None:
    at = app("home", monkeypatch, demo.url, sweep="demo")
    states = [t[3] for t in facts["trials"]]
    assert {m.label: int(m.value) for m in at.metric} == {s: states.count(s) for s in ("running", "complete", "pruned", "failed")}
    assert any(demo.dataset in t and "synthetic images" in t for t in texts(at))
    best, trials = at.dataframe[0].value, table_with(at, "error")
    assert dict(zip(best["arch"], best["trial"])) == facts["best_number"]
    assert set(best["encoder start"]) == {"random"}  # trials.encoder_weights: none recorded, or 'none'
    assert len(trials) == len(facts["trials"]) == 12
    assert trials["val dice"].iloc[0] == max(t[4] for t in facts["trials"] if t[4] is not None)  # sorted, best first
    assert any("Sweep running:" in t and "1 trial(s) in progress" in t for t in texts(at))
    assert at.toggle[0].value is True  # auto-refresh is on while the sweep runs
    assert [o for o in at.sidebar.selectbox[0].options] == ["odd · 1 trials", "demo · 12 trials · 1 running",
                                                            "demo-folder · 12 trials"]


def test_home_trials_table_sorts_by_the_chosen_column(demo, facts, monkeypatch) -> None:
    at = app("home", monkeypatch, demo.url, sweep="demo")
    widget(at.selectbox, "Sort by").set_value("trial number").run()
    trials = table_with(at, "error")
    assert trials["trial"].tolist() == sorted(trials["trial"].tolist())


def test_learning_curves_draw_every_trial_coloured_by_arch_with_best_emphasised(demo, facts, monkeypatch) -> None:
    at = app("curves", monkeypatch, demo.url, sweep="demo")
    loss, dice = charts(at)
    assert loss["layout"]["annotations"][0]["text"] == "train loss" and dice["layout"]["annotations"][1]["text"] == "validation dice"
    legend = {t["name"]: t for t in loss["data"] if t.get("showlegend")}
    assert len(legend) == 12  # every trial has at least one epoch
    best_names = {f"{a} #{n} ★" for a, n in facts["best_number"].items()}
    assert {n for n, t in legend.items() if t["line"]["width"] == 3.5} == best_names
    muted = {n: t["opacity"] for n, t in legend.items() if "(pruned)" in n or "(failed)" in n}
    assert len(muted) == 4 and set(muted.values()) == {0.35}
    colors = {n.split(" #")[0]: t["line"]["color"] for n, t in legend.items()}
    assert len(set(colors.values())) == 2  # one colour per architecture
    assert len(at.dataframe[0].value) == 12


def test_learning_curves_follow_the_trial_selection(demo, facts, monkeypatch) -> None:
    at = app("curves", monkeypatch, demo.url, sweep="demo")
    at.multiselect[0].set_value(list(facts["best"].values())).run()
    legend = [t for t in charts(at)[0]["data"] if t.get("showlegend")]
    assert len(legend) == 2 and len(at.dataframe[0].value) == 2


def test_distributions_show_best_trials_stats_three_charts_and_the_paired_test(demo, facts, monkeypatch) -> None:
    at = app("distributions", monkeypatch, demo.url, sweep="demo")
    summary = at.dataframe[0].value.set_index("trial")
    assert set(summary.index) == {f"{a} #{n}" for a, n in facts["best_number"].items()}
    for arch, tid in facts["best"].items():
        dice = np.array([r[2] for r in facts["results"][tid]])
        row = summary.loc[f"{arch} #{facts['best_number'][arch]}"]
        assert row["mean"] == pytest.approx(dice.mean(), abs=1e-4)
        assert row["p10"] == pytest.approx(np.percentile(dice, 10), abs=1e-4)
        assert row["worst"] == pytest.approx(dice.min(), abs=1e-4) and row["worst image"] == facts["results"][tid][0][0]
    kinds = [c["data"][0]["type"] for c in charts(at)]
    # histogram, violin, ECDF, paired scatter, then the failure-mode bars and confidence against dice
    assert kinds == ["histogram", "violin", "scatter", "scatter", "bar", "scatter"]
    a, b = facts["best"]["resnet34_unet"], facts["best"]["unet"]
    da = dict((r[0], r[2]) for r in facts["results"][a])
    db = dict((r[0], r[2]) for r in facts["results"][b])
    names = sorted(da)
    p = sps.wilcoxon([da[n] for n in names], [db[n] for n in names]).pvalue
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Wilcoxon signed-rank p"] == f"{p:.3g}"
    assert metrics["Mean difference (B − A)"] == f"{np.mean([db[n] - da[n] for n in names]):+.4f}"
    assert len(at.dataframe[1].value) == 10  # the images where they disagree most


def test_the_paired_comparison_asks_for_two_different_trials(demo, facts, monkeypatch) -> None:
    at = app("distributions", monkeypatch, demo.url, sweep="demo")
    same = facts["best"]["unet"]
    widget(at.selectbox, "A").set_value(same).run()
    widget(at.selectbox, "B").set_value(same).run()
    assert not at.exception and "Choose two different trials." in [i.value for i in at.info]
    assert "Wilcoxon signed-rank p" not in {m.label for m in at.metric}


def test_the_paired_comparison_says_when_two_trials_share_no_image(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    ids = store.register_dataset("toy", "synthetic", tmp_path, [_TestImage(n) for n in ("cat_1", "cat_2")])
    for number, name in enumerate(("cat_1", "cat_2")):  # each trial scored on a different image
        tid = store.start_trial(sweep="apart", study="apart/unet", arch="unet", number=number, params={"lr": 1e-3},
                                device="cpu", dataset="toy", image_size=64)
        dice = np.array([0.5 + number / 10])
        store.finish_trial(tid, state="complete", val_dice=0.5, results=ImageResults(
            np.array([ids[name]]), dice, dice, dice))
    store.dispose()
    at = app("distributions", monkeypatch, url, sweep="apart")
    assert "These two trials evaluated no image in common." in [i.value for i in at.info]
    assert "Wilcoxon signed-rank p" not in {m.label for m in at.metric}


def test_border_aware_toggle_switches_the_distributions_to_dice_no_border(demo, facts, monkeypatch) -> None:
    at = app("distributions", monkeypatch, demo.url, sweep="demo")
    at.toggle[0].set_value(True).run()
    tid = facts["best"]["unet"]
    summary = at.dataframe[0].value.set_index("trial")
    expected = np.mean([r[3] for r in facts["results"][tid]])
    assert summary.loc[f"unet #{facts['best_number']['unet']}", "mean"] == pytest.approx(expected, abs=1e-4)
    assert "dice no border" in json.dumps(charts(at)[0]["layout"])


def test_hardest_images_gallery_is_worst_first_and_paged(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    best = facts["best"]["resnet34_unet"]  # the first architecture, its best trial by default
    worst_first = [r[0] for r in facts["results"][best]]
    assert gallery_count(at) == len(worst_first) == 18
    assert gallery_names(at) == worst_first[:12]
    assert len(at.image) == 12 and all(len(i.value) == 1 for i in at.image)
    assert any("false positive" in m.value and "false negative" in m.value for m in at.markdown)  # the legend
    assert widget(at.button_group, "Split").options == ["test"] and widget(at.button_group, "Species").options == ["cat", "dog"]
    at.number_input[0].set_value(2).run()
    assert gallery_names(at) == worst_first[12:] and len(at.image) == 6


def test_species_filter_changes_the_gallery(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    before = gallery_names(at)
    widget(at.button_group, "Species").set_value(["dog"]).run()
    dogs = [r[0] for r in facts["results"][facts["best"]["resnet34_unet"]] if r[1] == "dog"]
    assert gallery_count(at) == len(dogs) < 18
    assert gallery_names(at) == dogs[:12] != before
    assert all("· dog ·" in c.value for c in at.caption if " · test · " in c.value)


def test_dice_range_and_trial_filters_narrow_the_gallery(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    widget(at.sidebar.selectbox, "Architecture").set_value("unet").run()
    unet = [r for r in facts["results"][facts["best"]["unet"]]]
    assert gallery_names(at)[0] == unet[0][0]
    widget(at.slider, "dice range").set_value((0.0, 0.8)).run()
    assert gallery_count(at) == sum(r[2] <= 0.8 for r in unet)
    widget(at.slider, "dice range").set_value((0.99, 1.0)).run()
    assert any("No image matches the filters." in i.value for i in at.info) and len(at.image) == 0


def test_hard_for_every_model_ranks_images_by_median_over_complete_trials(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    at.radio(key="gallery_view").set_value("Hard for every model").run()
    complete = [t[0] for t in facts["trials"] if t[3] == "complete"]
    per_image: dict[str, list[float]] = {}
    for tid in complete:
        for name, _species, dice, _dnb in facts["results"][tid]:
            per_image.setdefault(name, []).append(dice)
    medians = sorted((float(np.median(v)), n) for n, v in per_image.items())
    assert gallery_names(at) == [n for _, n in medians[:12]]
    first = next(t for t in texts(at) if t.startswith("**1. "))
    assert f"median dice **{medians[0][0]:.3f}** over {len(complete)} trials" in first
    assert len(at.image) == 12  # one strip per image: photo, truth and the best trial of each arch


def test_picking_an_image_shows_it_across_every_trial(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    name = gallery_names(at)[0]
    at.button[0].click().run()
    assert any(s.value == f"{name} across every architecture and trial" for s in at.subheader)
    complete = [t for t in facts["trials"] if t[3] == "complete"]
    table = at.dataframe[0].value
    assert len(table) == len(complete) and set(table["arch"]) == {"unet", "resnet34_unet"}
    overlays = sum(len(i.value) for i in at.image[1:3])
    assert overlays == len(complete)  # one prediction per complete trial, grouped by arch
    at.button(key="close_inspect").click().run()
    assert "inspect_image" not in at.session_state and not at.subheader


def test_missing_and_outside_root_images_show_notes_not_files(demo, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep=ODD)
    notes = [c.value for c in at.caption if c.value.startswith("⚠")]
    assert "⚠ missing: images/ghost_1.jpg" in notes
    assert notes.count("⚠ refused: outside dataset root") == 2  # the ../ name and the outbound symlink
    assert gallery_count(at) == 4 and len(at.image) == 4


def test_insights_draw_optuna_plots_and_hyperparameters_against_the_tail(demo, facts, monkeypatch) -> None:
    at = app("insights", monkeypatch, demo.url, sweep="demo")
    figures = charts(at)
    assert len(figures) == 6  # history, importances, parallel coordinates, slice, params vs tail, params vs modes
    assert any("Optuna study `demo/resnet34_unet`: 6 trials, 3 complete." == c.value for c in at.caption)
    corr = at.dataframe[0].value
    assert set(corr["hyperparameter"]) == {"lr", "dice_weight", "aug_hflip", "aug_rotate", "aug_brightness"}
    table = at.dataframe[1].value
    complete = [t for t in facts["trials"] if t[1] == "resnet34_unet" and t[3] == "complete"]
    assert len(table) == len(complete)
    row = table.set_index("trial").loc[facts["best_number"]["resnet34_unet"]]
    dice = np.sort([r[2] for r in facts["results"][facts["best"]["resnet34_unet"]]])
    assert row["worst-10% mean"] == pytest.approx(dice[:2].mean(), abs=1e-4)  # ceil(18 / 10) = 2 images


def test_insights_explain_importances_need_two_complete_trials(demo, monkeypatch) -> None:
    at = app("insights", monkeypatch, demo.url, sweep=ODD)
    assert any("need at least 2 complete trials" in i.value for i in at.info)
    assert len(charts(at)) == 3  # history, parallel coordinates, slice


# -- nothing to show -------------------------------------------------------------------------

@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_explains_how_to_create_a_missing_database(page, tmp_path, monkeypatch) -> None:
    at = app(page, monkeypatch, str(tmp_path / "nothing-here.db"))
    assert f"No results database at `{tmp_path / 'nothing-here.db'}`." in at.warning[0].value
    assert "python -m jobs.sweep --db" in at.info[0].value
    assert not at.get("plotly_chart") and not at.dataframe


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_explains_an_empty_database(page, tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(url).dispose()  # the schema, no trial
    at = app(page, monkeypatch, url)
    assert "holds no results yet" in at.warning[0].value and "python -m jobs.sweep" in at.info[0].value
    assert not at.get("plotly_chart") and not at.image


def test_a_database_of_another_schema_version_shows_the_one_line_error(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'"))
    store.dispose()
    at = app("hardest", monkeypatch, url)
    assert "has results schema version 99" in at.error[0].value and "\n" not in at.error[0].value
    assert "python -m jobs.sweep" in at.info[0].value


def test_the_database_chosen_in_the_sidebar_is_kept_across_pages(demo, tmp_path, monkeypatch) -> None:
    at = app("home", monkeypatch, str(tmp_path / "nothing-here.db"))
    at.sidebar.text_input[0].set_value(demo.url).run()
    assert at.metric and at.session_state["results_db"] == demo.url
    at.switch_page("pages/1_Learning_curves.py").run()
    assert not at.exception and len(at.get("plotly_chart")) == 2


# -- pictures and statistics ---------------------------------------------------------------

def test_paths_escaping_the_dataset_root_are_refused(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.jpg")
    (root / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert images.resolve_inside(root, "images/../../secret.jpg") is None
    assert images.resolve_inside(root, "/etc/passwd") is None
    assert images.load_photo(root, "images/link.jpg", 8).note == images.REFUSED
    assert images.load_photo(root, "images/../../secret.jpg", 8).note == images.REFUSED
    assert images.load_photo(root, "images/absent.jpg", 8).note == "missing: images/absent.jpg"


def test_odd_image_files_are_read_as_rgb_and_unreadable_ones_get_a_note(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("CMYK", (10, 6), (0, 255, 0, 0)).save(tmp_path / "images" / "cmyk.jpg", "JPEG")
    Image.new("L", (10, 6), 128).save(tmp_path / "images" / "gray.jpg", "PNG")  # a PNG named .jpg
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    assert images.load_photo(tmp_path, "images/cmyk.jpg", 16).array.shape == (16, 16, 3)
    assert images.load_photo(tmp_path, "images/gray.jpg", 16).array[0, 0].tolist() == [128, 128, 128]
    assert images.load_photo(tmp_path, "images/broken.jpg", 16).note == "unreadable: images/broken.jpg"


def test_overlay_colours_false_positives_and_false_negatives_distinctly() -> None:
    truth = np.zeros((4, 4), bool)
    truth[:2] = True                     # top half is the object
    pred = np.zeros((4, 4), bool)
    pred[1:3] = True                     # rows 1-2 predicted
    photo = np.zeros((8, 8, 3), np.uint8)
    out = images.overlay(photo, truth, pred, 8)
    fp, fn, tp, tn = out[5, 0], out[0, 0], out[3, 0], out[7, 0]  # display rows 4-5 = mask row 2 (FP) etc.
    assert fp.tolist() == [round(c * 0.7) for c in images.FP_COLOR]
    assert fn.tolist() == [round(c * 0.7) for c in images.FN_COLOR]
    assert tp.tolist() == [round(255 * 0.35)] * 3 and tn.tolist() == [0, 0, 0]


def test_panels_fall_back_to_placeholders_with_notes(tmp_path) -> None:
    p = images.make_panels(images.image_files(str(tmp_path), "nobody", None, band=True), 8, 32,
                           [np.ones((8, 8), bool), None])
    assert p.photo.shape == p.truth.shape == (32, 32, 3) and len(p.predictions) == 2
    assert p.notes == ["missing: images/nobody.jpg", "missing: annotations/trimaps/nobody.png"]
    assert images.strip([p.photo, p.truth, *p.predictions]).shape == (32, 4 * 32 + 3 * 6, 3)


def test_paired_comparison_reports_the_mean_difference_ci_and_wilcoxon() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 0.9, 40)
    b = a + 0.05 + rng.normal(0, 0.01, 40)
    result = stats.compare_paired(a, b)
    assert result.mean_diff == pytest.approx(np.mean(b - a))
    assert result.ci_low < result.mean_diff < result.ci_high and result.ci_low > 0.04
    assert result.p_value == pytest.approx(sps.wilcoxon(a, b).pvalue) and result.b_better == 40
    same = stats.compare_paired(a, a)
    assert same.p_value is None and same.mean_diff == 0.0


def test_summaries_give_mean_median_percentiles_and_the_worst_image() -> None:
    import pandas as pd
    scores = pd.DataFrame({"trial_id": [1] * 5, "name": list("abcde"), "dice": [0.5, 0.9, 0.1, 0.7, 0.3]})
    row = stats.summarize(scores, "dice").iloc[0]
    assert row["mean"] == pytest.approx(0.5) and row["median"] == 0.5 and row["worst"] == 0.1
    assert row["worst image"] == "c" and row["images"] == 5
    assert row["p10"] == pytest.approx(np.percentile([0.5, 0.9, 0.1, 0.7, 0.3], 10))


# -- why images fail: failure modes, every metric, confidence, the compare view, a v1 store -----------

def _direct(demo: DemoStore, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(f"file:{demo.url.removeprefix('sqlite:///')}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


def test_distributions_show_failure_mode_shares_of_each_best_trial_and_the_sweep(demo, facts, monkeypatch) -> None:
    at = app("distributions", monkeypatch, demo.url, sweep="demo")
    table = table_with(at, "trials").set_index("trials")
    for arch, tid in facts["best"].items():
        counts = dict(_direct(demo, "SELECT failure_mode, count(*) FROM image_results WHERE trial_id = ? "
                                    "GROUP BY failure_mode", tid))
        row = table.loc[f"{arch} · best trial #{facts['best_number'][arch]}"]
        assert row["images"] == sum(counts.values()) == 18
        for mode, n in counts.items():
            assert row[mode] == pytest.approx(n / 18)
        pooled = dict(_direct(demo, "SELECT failure_mode, count(*) FROM image_results JOIN trials ON trials.id = "
                                    "trial_id WHERE sweep = 'demo' AND arch = ? GROUP BY failure_mode", arch))
        n_trials = sum(1 for t in facts["trials"] if t[1] == arch and t[3] == "complete")
        row = table.loc[f"{arch} · sweep ({n_trials} trials)"]
        assert row["images"] == sum(pooled.values())
        assert {m: row[m] * row["images"] for m in pooled} == pytest.approx(pooled)
    bars = charts(at)[4]
    assert {t["name"] for t in bars["data"]} <= {"ok", "boundary", "missed object", "background leak", "empty prediction"}


def test_every_new_metric_is_selectable_in_the_distributions(demo, facts, monkeypatch) -> None:
    at = app("distributions", monkeypatch, demo.url, sweep="demo")
    assert at.selectbox(key="dist_metric").options == [
        "dice", "IoU", "precision", "recall", "false-positive area", "false-negative area", "Boundary IoU",
        "HD95 (px)", "false-positive blobs", "mean entropy (bits)"]
    at.selectbox(key="dist_metric").set_value("hd95").run()
    tid = facts["best"]["unet"]
    hd95 = np.array([v for (v,) in _direct(demo, "SELECT hd95 FROM image_results WHERE trial_id = ?", tid)])
    row = at.dataframe[0].value.set_index("trial").loc[f"unet #{facts['best_number']['unet']}"]
    assert row["mean"] == pytest.approx(hd95.mean(), abs=1e-4)
    assert row["worst"] == pytest.approx(hd95.max(), abs=1e-4)  # for an error metric the worst is the highest
    assert row["p10"] == pytest.approx(np.percentile(hd95, 90), abs=1e-4)
    figures = charts(at)
    assert figures[0]["data"][0]["type"] == "histogram" and "hd95" in json.dumps(figures[0]["layout"])
    assert "hd95" in json.dumps(figures[3]["layout"])  # the paired comparison follows the metric


def test_confidence_against_dice_reports_spearman_per_trial(demo, facts, monkeypatch) -> None:
    at = app("distributions", monkeypatch, demo.url, sweep="demo")
    rho = next(d.value for d in at.dataframe if "Spearman ρ (entropy, dice)" in d.value.columns).set_index("trial")
    for arch, tid in facts["best"].items():
        rows = np.array(_direct(demo, "SELECT entropy, dice FROM image_results WHERE trial_id = ?", tid))
        expected = sps.spearmanr(rows[:, 0], rows[:, 1]).statistic
        got = rho.loc[f"{arch} #{facts['best_number'][arch]}", "Spearman ρ (entropy, dice)"]
        assert got == pytest.approx(expected, abs=1e-3) and got < 0  # the demo's models know when they fail
    assert charts(at)[5]["layout"]["xaxis"]["title"]["text"].startswith("mean entropy")


def test_failure_mode_filter_narrows_the_gallery_and_captions_name_the_mode(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    best = facts["best"]["resnet34_unet"]
    modes = dict(_direct(demo, "SELECT images.name, failure_mode FROM image_results JOIN images ON images.id = "
                               "image_id WHERE trial_id = ?", best))
    pills = widget(at.button_group, "Failure mode")
    assert set(pills.options) == set(modes.values())
    chosen = sorted(set(modes.values()) - {"ok"})[0]
    pills.set_value([chosen]).run()
    expected = [name for name, *_ in facts["results"][best] if modes[name] == chosen]
    assert gallery_count(at) == len(expected) and gallery_names(at) == expected[:12]
    headers = [t for t in texts(at) if re.match(r"\*\*\d+\. ", t)]
    assert headers and all(t.endswith(f"· **{chosen}**") for t in headers)
    diagnoses = [c.value for c in at.caption if c.value.startswith("failure mode: ")]
    assert len(diagnoses) == len(headers) and all(d.startswith(f"failure mode: {chosen} · precision") for d in diagnoses)


def test_the_gallery_ranks_by_any_metric_worst_first(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    widget(at.sidebar.selectbox, "Rank by (worst first)").set_value("hd95").run()
    best = facts["best"]["resnet34_unet"]
    rows = _direct(demo, "SELECT images.name, hd95 FROM image_results JOIN images ON images.id = image_id "
                         "WHERE trial_id = ? ORDER BY hd95 DESC, image_id", best)
    assert gallery_names(at) == [n for n, _ in rows[:12]]
    assert not [s for s in at.slider if "range" in s.label]  # HD95 is in pixels, not a [0, 1] score
    widget(at.sidebar.selectbox, "Rank by (worst first)").set_value("failure_mode").run()
    severity = ["empty prediction", "missed object", "background leak", "boundary", "ok"]
    rows = _direct(demo, "SELECT images.name, failure_mode, dice, image_id FROM image_results JOIN images ON "
                         "images.id = image_id WHERE trial_id = ?", best)
    expected = [r[0] for r in sorted(rows, key=lambda r: (severity.index(r[1]), r[2], r[3]))]
    assert gallery_names(at) == expected[:12]


def test_the_compare_view_shows_one_image_under_two_trials_side_by_side(demo, facts, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    at.radio(key="gallery_view").set_value("Compare two trials").run()
    a, b = facts["best"]["resnet34_unet"], facts["best"]["unet"]
    da = {n: d for n, _s, d, _b in facts["results"][a]}
    db = {n: d for n, _s, d, _b in facts["results"][b]}
    widest = max(sorted(da), key=lambda n: abs(db[n] - da[n]))
    assert any(m.value.startswith(f"**{widest}** under **A: resnet34_unet") for m in at.markdown)
    assert len(at.image) == 1 and len(at.image[0].value) == 1  # one strip: image, truth, A, B
    table = at.dataframe[0].value.set_index("metric")
    assert float(table.loc["dice", "A"]) == pytest.approx(da[widest], abs=1e-4)
    assert float(table.loc["dice", "B"]) == pytest.approx(db[widest], abs=1e-4)
    modes = dict(_direct(demo, "SELECT trial_id, failure_mode FROM image_results JOIN images ON images.id = image_id "
                               "WHERE name = ? AND trial_id IN (?, ?)", widest, a, b))
    assert table.loc["failure mode", "A"] == modes[a] and table.loc["failure mode", "B"] == modes[b]


def test_insights_relate_hyperparameters_to_failure_mode_shares(demo, facts, monkeypatch) -> None:
    at = app("insights", monkeypatch, demo.url, sweep="demo")
    corr = next(d.value for d in at.dataframe if any(c.startswith("ρ with ") for c in d.value.columns))
    assert set(corr["hyperparameter"]) == {"lr", "dice_weight", "aug_hflip", "aug_brightness"} | (
        set(corr["hyperparameter"]) & {"aug_rotate"})
    complete = [t[0] for t in facts["trials"] if t[1] == "resnet34_unet" and t[3] == "complete"]
    params = {tid: json.loads(p) for tid, p in _direct(
        demo, f"SELECT id, params FROM trials WHERE id IN ({','.join(map(str, complete))})")}
    for mode in [c.removeprefix("ρ with ") for c in corr.columns if c.startswith("ρ with ")]:
        share = {tid: n / 18 for tid, n in _direct(demo, f"SELECT trial_id, count(*) FROM image_results WHERE "
                 f"failure_mode = ? AND trial_id IN ({','.join(map(str, complete))}) GROUP BY trial_id", mode)}
        x = [params[t]["lr"] for t in complete]
        y = [share.get(t, 0.0) for t in complete]
        expected = stats.spearman(np.array(x), np.array(y))
        got = corr.set_index("hyperparameter").loc["lr", f"ρ with {mode}"]
        assert (expected is None and pd_isna(got)) or got == pytest.approx(expected, abs=1e-3)


def pd_isna(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _older_store(demo: DemoStore, factory: pytest.TempPathFactory, version: int):
    """A genuine store of schema `version` (tests.v<version>_store) over the demo's images, and its file."""
    import importlib

    from core.data.dataset import prepare_dataset

    build = getattr(importlib.import_module(f"tests.v{version}_store"), f"build_v{version}_store")
    path = factory.mktemp(f"v{version}") / f"v{version}.db"
    return build(f"sqlite:///{path}", prepare_dataset(demo.root, 64, log=lambda _m: None)), path


@pytest.fixture(scope="module")
def v1_store(demo: DemoStore, tmp_path_factory: pytest.TempPathFactory):
    return _older_store(demo, tmp_path_factory, 1)


@pytest.mark.parametrize("page", ["home", "distributions", "hardest", "insights"])
def test_a_v1_store_is_shown_as_it_is_with_the_command_that_upgrades_it(v1_store, page, monkeypatch) -> None:
    v1, path = v1_store
    before = path.read_bytes()
    at = app(page, monkeypatch, v1.url, sweep="old")
    assert not at.error, [e.value for e in at.error]  # v4's columns are absent here, and not read
    notes = [i.value for i in at.info if "schema version 1" in i.value]
    assert len(notes) == 1 and f"python -m jobs.upgrade --db {path}" in notes[0]
    if page == "hardest":
        assert gallery_count(at) == len(v1.image_ids) and not [b for b in at.button_group if b.label == "Failure mode"]
        assert widget(at.sidebar.selectbox, "Rank by (worst first)").options == ["dice", "border-aware dice", "IoU"]
        at.radio(key="gallery_view").set_value("Hard for every model").run()
        assert not at.exception and not [b for b in at.button_group if b.label == "Most common failure mode"]
        ranking = _sweep_ranking(path, "old", modes=False)
        assert gallery_count(at) == len(ranking) and gallery_names(at) == [r[2] for r in ranking[:12]]
    if page == "distributions":
        assert not [s for s in at.selectbox if s.label == "Metric"] and len(at.dataframe[0].value) == 1  # one arch
    assert path.read_bytes() == before  # the dashboard never writes


# -- the every-model view: most common failure mode, and a store without the per-image summaries ----------

WORST_FIRST = ("empty prediction", "missed object", "background leak", "boundary", "ok", "not computed")
MODE_ORDER = ("ok", "boundary", "missed object", "background leak", "empty prediction", "not computed")


def _sweep_ranking(path: Path, sweep: str, modes: bool = True) -> list[tuple[float, int, str, str, int, int]]:
    """(median dice, image id, name, most common mode, its trials, trials) per image of the sweep's complete
    trials, read straight from the file, easiest-to-check order: hardest first, ties by image id. A v1 store
    (modes=False) has no failure modes: every result counts as not computed."""
    mode = "r.failure_mode" if modes else "NULL"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(f"SELECT r.image_id, images.name, r.dice, {mode} FROM image_results r JOIN trials "
                            "ON trials.id = r.trial_id JOIN images ON images.id = r.image_id WHERE trials.sweep = ? "
                            "AND trials.state = 'complete'", (sweep,)).fetchall()
    per: dict[int, list] = {}
    for image_id, name, dice, mode in rows:
        per.setdefault(image_id, [name, [], []])
        per[image_id][1].append(dice)
        per[image_id][2].append(mode or "not computed")
    out = []
    for image_id, (name, dice, modes) in per.items():
        top = min(WORST_FIRST, key=lambda m: -modes.count(m))
        out.append((float(np.median(dice)), image_id, name, top, modes.count(top), len(modes)))
    return sorted(out)


def test_hard_for_every_model_filters_by_the_most_common_failure_mode(demo, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    at.radio(key="gallery_view").set_value("Hard for every model").run()
    ranking = _sweep_ranking(Path(demo.url.removeprefix("sqlite:///")), "demo")
    tops = {r[3] for r in ranking}
    pills = widget(at.button_group, "Most common failure mode")
    assert pills.options == [m for m in MODE_ORDER if m in tops] and len(tops) > 1
    chosen = min(tops, key=lambda m: (sum(r[3] == m for r in ranking) < 2, MODE_ORDER.index(m)))
    pills.set_value([chosen]).run()
    expected = [r for r in ranking if r[3] == chosen]
    assert 0 < gallery_count(at) == len(expected) < len(ranking)
    assert gallery_names(at) == [r[2] for r in expected[:12]]
    notes = [c.value for c in at.caption if c.value.startswith("most common failure mode: ")]
    assert notes == [f"most common failure mode: {chosen}, in {r[4]} of {r[5]} trials" for r in expected[:12]]
    assert not [c for c in at.caption if "predates the per-image summaries" in c.value]


@pytest.fixture(scope="module")
def v2_store(demo: DemoStore, tmp_path_factory: pytest.TempPathFactory):
    return _older_store(demo, tmp_path_factory, 2)


def test_a_v2_store_ranks_every_model_from_every_result_without_writing(v2_store, monkeypatch) -> None:
    v2, path = v2_store
    before = path.read_bytes()
    at = app("hardest", monkeypatch, v2.url, sweep="old")
    at.radio(key="gallery_view").set_value("Hard for every model").run()
    assert not at.exception
    ranking = _sweep_ranking(path, "old")
    assert gallery_count(at) == len(ranking) and gallery_names(at) == [r[2] for r in ranking[:12]]
    hint = [c.value for c in at.caption if "predates the per-image summaries" in c.value]
    assert len(hint) == 1 and f"python -m jobs.upgrade --db {path}" in hint[0]
    chosen = ranking[0][3]
    widget(at.button_group, "Most common failure mode").set_value([chosen]).run()
    assert gallery_names(at) == [r[2] for r in ranking if r[3] == chosen][:12]
    assert path.read_bytes() == before  # the dashboard never writes


# -- the user's own data: groups, words of their data, the truth as scored --------------------------------

def _clear_caches() -> None:
    """After writing marks behind the pages' back: the next run reads them, not a cached copy."""
    from dashboard import common

    common.cached_query.clear()
    common._cached_per_version.clear()


@pytest.fixture
def marker(folder: FolderDemo):
    """Writes review marks straight into the store (as another person's dashboard would); removes every mark after."""
    from core.store import reviews
    from core.store.db import make_engine

    engine = make_engine(folder.url)

    def mark(name: str, verdict: str | None, note: str | None = None) -> None:
        reviews.mark(engine, folder.dataset, name, verdict, note)
        _clear_caches()
    yield mark
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM reviews"))
    engine.dispose()
    _clear_caches()


def test_a_folder_dataset_shows_groups_and_no_breed_filters_or_ignore_band(folder, monkeypatch) -> None:
    at = app("hardest", monkeypatch, folder.url, sweep=folder.sweep)
    labels = {w.label for w in [*at.button_group, *at.multiselect]}
    assert "Group" in labels and not {"Breed", "Species"} & labels
    assert widget(at.button_group, "Group").options == ["site-a", "site-b"]
    assert "border-aware dice" not in widget(at.sidebar.selectbox, "Rank by (worst first)").options
    assert widget(at.slider, "Object size (share of pixels)")
    legend = next(m.value for m in at.markdown if "Prediction overlay" in m.value)
    assert "object the model missed" in legend and "pet" not in legend and "ignore band" not in legend
    described = [c.value for c in at.caption if " · test · " in c.value]
    assert len(described) == 12 and all(c.startswith("group site-") for c in described)
    assert not [c for c in described if "pet" in c or "border-aware" in c]
    assert gallery_count(at) == len(folder.test_images)
    assert not [c.value for c in at.caption if c.value.startswith("⚠")]  # every file found through images.path
    pills = widget(at.button_group, "Failure mode")
    assert "missed pet" not in pills.options and "missed object" in pills.options
    at.button[0].click().run()  # one image across every trial
    table = at.dataframe[0].value
    assert "border-aware dice" not in table.columns and "missed pet" not in set(table["failure mode"])
    assert not [t for t in app("insights", monkeypatch, folder.url, sweep=folder.sweep).toggle
                if t.label == "Border-aware dice"]


def test_failure_modes_speak_of_objects_on_a_folder_dataset_and_in_the_store(folder, monkeypatch) -> None:
    stored = {m for (m,) in _direct(folder, "SELECT DISTINCT failure_mode FROM image_results JOIN trials ON trials.id "
                                            "= trial_id WHERE sweep = ?", folder.sweep)}
    assert "missed object" in stored and "missed pet" not in stored
    at = app("distributions", monkeypatch, folder.url, sweep=folder.sweep)
    table = table_with(at, "trials")
    assert "missed object" in table.columns and "missed pet" not in table.columns
    assert {t["name"] for t in charts(at)[4]["data"]} <= {"ok", "boundary", "missed object", "background leak",
                                                          "empty prediction"}
    assert not [t for t in at.toggle if t.key == "border_aware"]  # no ignore band
    assert any("`missed object`" in c.value for c in at.caption)


def test_oxford_data_speaks_of_objects_keeps_breeds_the_band_toggle_and_has_no_group_filter(demo, monkeypatch) -> None:
    at = app("hardest", monkeypatch, demo.url, sweep="demo")
    legend = next(m.value for m in at.markdown if "Prediction overlay" in m.value)
    assert "object the model missed" in legend and "grey ignore band" in legend and "pet" not in legend
    assert not [b for b in at.button_group if b.label == "Group"] and widget(at.slider, "Object size (share of pixels)")
    assert widget(at.button_group, "Species") and widget(at.multiselect, "Breed")  # the data has breeds
    described = [c.value for c in at.caption if " · test · " in c.value]
    assert described and all("object " in c and "pet" not in c for c in described)
    assert "border-aware dice" in widget(at.sidebar.selectbox, "Rank by (worst first)").options
    at = app("distributions", monkeypatch, demo.url, sweep="demo")
    assert at.toggle(key="border_aware") and not [b for b in at.button_group if b.label == "Group"]


def test_the_group_filter_narrows_the_gallery_and_the_every_model_ranking(folder, monkeypatch) -> None:
    at = app("hardest", monkeypatch, folder.url, sweep=folder.sweep)
    site_b = {n for n in folder.test_images if folder.groups[n] == "site-b"}
    widget(at.button_group, "Group").set_value(["site-b"]).run()
    assert gallery_count(at) == len(site_b) < len(folder.test_images)
    assert set(gallery_names(at)) == site_b  # 9 images: one page
    at.radio(key="gallery_view").set_value("Hard for every model").run()
    widget(at.button_group, "Group").set_value(["site-a"]).run()
    assert gallery_count(at) == len(folder.test_images) - len(site_b)
    assert not set(gallery_names(at)) & site_b


def test_the_group_filter_narrows_the_distributions(folder, monkeypatch) -> None:
    at = app("distributions", monkeypatch, folder.url, sweep=folder.sweep)
    assert set(at.dataframe[0].value["images"]) == {len(folder.test_images)}
    widget(at.button_group, "Group").set_value(["site-b"]).run()
    site_b = [n for n in folder.test_images if folder.groups[n] == "site-b"]
    assert set(at.dataframe[0].value["images"]) == {len(site_b)}
    assert all(n.startswith("site-b") for n in table_with(at, "B − A")["name"])


def test_overlays_use_the_truth_as_scored_not_a_rebuild_from_the_trimap(tmp_path) -> None:
    from core.store.db import encode_mask

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "trimaps").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.full((8, 8), 1, np.uint8)).save(tmp_path / "annotations" / "trimaps" / "a.png")  # all pet
    scored = np.zeros((8, 8), bool)
    scored[:, :4] = True  # what the evaluation scored: the left half
    fp = [round(c * 0.7) for c in images.FP_COLOR]
    p = images.make_panels(images.image_files(str(tmp_path), "a", None, True, encode_mask(scored)), 8, 8,
                           [np.ones((8, 8), bool)])
    assert p.truth[0, 0].tolist() == [255] * 3 and p.truth[0, 7].tolist() == [0] * 3
    assert p.predictions[0][0, 7].tolist() == fp  # a false positive against the truth as scored
    older = images.make_panels(images.image_files(str(tmp_path), "a", None, True), 8, 8, [np.ones((8, 8), bool)])
    assert older.truth[0, 7].tolist() == [255] * 3 and older.predictions[0][0, 7].tolist() != fp  # the trimap's


def test_the_ignore_band_is_shaded_grey_where_the_data_has_one(tmp_path) -> None:
    """The Oxford-IIIT Pet reader gives the band (the trimap's border); data without one shows none."""
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "trimaps").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    trimap = np.full((8, 8), 2, np.uint8)
    trimap[:, :4], trimap[:, 4] = 1, 3  # foreground on the left, its border band in column 4
    Image.fromarray(trimap).save(tmp_path / "annotations" / "trimaps" / "a.png")
    shades = images.TRUTH_SHADES
    p = images.make_panels(images.image_files(str(tmp_path), "a", None, True), 8, 8, [])
    assert [p.truth[0, x, 0] for x in (0, 4, 7)] == [shades["foreground"], shades["ignore"], shades["background"]]
    mask = np.zeros((8, 8), bool)
    mask[:, :5] = True
    from core.store.db import encode_mask
    plain = images.make_panels(images.image_files(str(tmp_path), "a", None, False, encode_mask(mask)), 8, 8, [])
    assert [plain.truth[0, x, 0] for x in (0, 4, 7)] == [shades["foreground"], shades["foreground"], shades["background"]]


# -- suspect labels and the review queue ----------------------------------------------------------------

def _suspects(folder: FolderDemo) -> list[tuple]:
    """(name, score, consensus dice, agreement, contradiction, image evidence, median dice, trials), most suspect
    first."""
    return _direct(folder, "SELECT images.name, label_suspicion, consensus_dice, agreement, contradiction, "
                           "image_evidence, dice_median, s.trials FROM sweep_images s JOIN images ON images.id = s.image_id WHERE s.sweep = ? "
                           "ORDER BY label_suspicion IS NULL, label_suspicion DESC, dice_median, s.image_id", folder.sweep)


def test_suspect_labels_rank_images_by_the_score_and_show_its_parts(folder, monkeypatch) -> None:
    at = app("suspects", monkeypatch, folder.url, sweep=folder.sweep)
    expected = _suspects(folder)
    assert gallery_count(at) == len(expected) == len(folder.test_images)
    assert gallery_names(at) == [r[0] for r in expected[:6]] and len(at.image) == 6
    assert set(gallery_names(at)[:3]) == set(folder.planted)  # the wrong masks first
    ranks = [r[0] for r in expected]
    assert all(ranks.index(h) > 2 for h in folder.hard)  # hard images, right masks: not suspects
    name, score, cd, ag, co, ev, md, n = expected[0]
    assert f"**1. {name}** — label suspicion **{score:.3f}** · likely a label error" in texts(at)
    parts = [c.value for c in at.caption if c.value.startswith("group ")]
    entropy = np.median([e for (e,) in _direct(folder, "SELECT entropy FROM image_results JOIN trials ON trials.id = "
                                                       "trial_id JOIN images ON images.id = image_id WHERE sweep = ? "
                                                       "AND state = 'complete' AND images.name = ?", folder.sweep, name)])
    assert ev is not None  # the sweep recorded its test images: the score's image evidence is a part shown
    assert parts[0] == (f"group {folder.groups[name]} · test · contradiction {co:.2f} · certainty {1 - entropy:.2f} · "
                        f"image evidence {ev:.2f} · consensus dice {cd:.2f} · agreement {ag:.2f} · median dice {md:.2f} "
                        f"over {n} trials")
    assert [c.value for c in at.caption].count("review: not marked yet") == 6


def test_suspect_labels_say_how_many_models_vote_and_call_the_ranking_a_shortlist_when_they_are_weak(
        folder, monkeypatch) -> None:
    from core import labels

    dice = float(np.median([d for (d,) in _direct(folder, "SELECT test_dice FROM trials WHERE sweep = ? AND state = "
                                                          "'complete' AND test_dice IS NOT NULL", folder.sweep)]))
    [(voters,)] = _direct(folder, "SELECT max(trials) FROM sweep_images WHERE sweep = ?", folder.sweep)
    line = f"{voters} models vote, at a median test dice of {dice:.2f}."
    monkeypatch.setattr(labels, "SHORTLIST_BELOW_DICE", dice - 0.01)  # models good enough: the plain line
    at = app("suspects", monkeypatch, folder.url, sweep=folder.sweep)
    assert voters >= 2 and line in [c.value for c in at.caption]
    monkeypatch.setattr(labels, "SHORTLIST_BELOW_DICE", dice + 0.01)  # weaker than that: a shortlist, and why
    at = app("suspects", monkeypatch, folder.url, sweep=folder.sweep)
    warned = [c.value for c in at.caption if c.value.startswith(f"⚠ {line} ")]
    assert len(warned) == 1 and "shortlist to review, not a verdict" in warned[0]
    assert f"below {dice + 0.01:.2f}" in warned[0] and "docs/benchmarks.md" in warned[0]
    assert "%" not in warned[0]  # no measured figure it cannot compute: those are in docs/benchmarks.md


def test_a_click_marks_an_image_and_the_cards_and_filters_show_it(folder, marker, monkeypatch) -> None:
    at = app("suspects", monkeypatch, folder.url, sweep=folder.sweep)
    first = gallery_names(at)[0]
    key = f"{folder.dataset}::{first}"
    at.text_input(key=f"note::{key}").set_value("mask shifted right").run()
    at.button(key=f"mark::{key}::label error").click().run()
    assert _direct(folder, "SELECT image, mark, note FROM reviews") == [(first, "label error", "mask shifted right")]
    assert "review: **label error** — mask shifted right" in [c.value for c in at.caption]
    assert at.get("download_button")[0].proto.label == "Download the review marks as CSV (1 marked)"
    widget(at.button_group, "Review mark").set_value(["label error"]).run()
    assert gallery_count(at) == 1 and gallery_names(at) == [first]
    gallery = app("hardest", monkeypatch, folder.url, sweep=folder.sweep)
    assert "review: **label error** — mask shifted right" in [c.value for c in gallery.caption]
    widget(gallery.button_group, "Review mark").set_value(["label error"]).run()
    assert gallery_count(gallery) == 1 and gallery_names(gallery) == [first]
    widget(gallery.button_group, "Review mark").set_value(["unmarked"]).run()
    assert gallery_count(gallery) == len(folder.test_images) - 1
    widget(at.button_group, "Review mark").set_value(["unmarked", "label error"]).run()
    at.button(key=f"mark::{key}::None").click().run()  # clear
    assert _direct(folder, "SELECT count(*) FROM reviews") == [(0,)]


def test_the_csv_download_holds_name_path_mark_note_and_score(folder, marker, monkeypatch) -> None:
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    served: list[tuple[bytes, str | None]] = []  # what the download button hands the browser
    load = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if mimetype == "text/csv":
            served.append((path_or_data, filename))
        return load(self, path_or_data, mimetype, kind, filename)
    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    name = sorted(folder.planted)[0]
    marker(name, "label error", 'erased, "see" notes')
    at = app("suspects", monkeypatch, folder.url, sweep=folder.sweep)
    assert at.get("download_button")[0].proto.label == "Download the review marks as CSV (1 marked)"
    score = dict((r[0], r[1]) for r in _suspects(folder))[name]
    data, filename = served[-1]
    assert filename == "review-marks-folder-folder-demo.csv"
    assert (data.decode() if isinstance(data, bytes) else data).splitlines() == [
        "name,path,mark,note,score",
        f'{name},{folder.groups[name]}/images/{name}.png,label error,"erased, ""see"" notes",{score:.6g}']


def test_a_dashboard_started_read_only_shows_marks_but_no_buttons_and_writes_nothing(folder, marker, monkeypatch) -> None:
    name = sorted(folder.planted)[0]
    marker(name, "fine", "checked")
    path = Path(folder.url.removeprefix("sqlite:///"))
    files = [path, path.with_name(path.name + "-wal")]
    before = [f.read_bytes() if f.exists() else None for f in files]
    monkeypatch.setenv("SEGSWEEP_READ_ONLY", "1")
    at = app("suspects", monkeypatch, folder.url, sweep=folder.sweep)
    assert not [b for b in at.button if (b.key or "").startswith("mark::")]
    assert not [t for t in at.text_input if (t.key or "").startswith("note::")]
    assert "review: **fine** — checked" in [c.value for c in at.caption]
    assert "Started read-only: marks are shown, not written." in [c.value for c in at.caption]
    assert any("started read-only: nothing is written" in c.value for c in at.sidebar.caption)
    assert [f.read_bytes() if f.exists() else None for f in files] == before


def test_hard_for_every_model_can_leave_out_likely_label_errors(folder, marker, monkeypatch) -> None:
    from core.labels import LIKELY_LABEL_ERROR

    at = app("hardest", monkeypatch, folder.url, sweep=folder.sweep)
    at.radio(key="gallery_view").set_value("Hard for every model").run()
    widget(at.sidebar.selectbox, "Images per page").set_value(24).run()
    assert set(folder.planted) | set(folder.hard) <= set(gallery_names(at))
    likely = {r[0] for r in _suspects(folder) if r[1] >= LIKELY_LABEL_ERROR}
    assert likely == set(folder.planted)
    at.toggle(key=f"skip_errors::{folder.url}::{folder.sweep}").set_value(True).run()
    assert gallery_count(at) == len(folder.test_images) - len(likely)
    assert not likely & set(gallery_names(at)) and set(folder.hard) <= set(gallery_names(at))
    kept = sorted(likely)[0]
    marker(kept, "hard image")  # a person's review overrides the score
    at.run()
    assert kept in gallery_names(at) and gallery_count(at) == len(folder.test_images) - len(likely) + 1


@pytest.fixture(scope="module")
def v3_store(demo: DemoStore, tmp_path_factory: pytest.TempPathFactory):
    return _older_store(demo, tmp_path_factory, 3)


def test_a_v3_store_is_read_without_the_v4_columns_and_offers_no_marks(v3_store, monkeypatch) -> None:
    v3, path = v3_store
    before = path.read_bytes()
    at = app("suspects", monkeypatch, v3.url, sweep="old")
    assert any("predates the suspect-label score" in i.value and f"jobs.upgrade --db {path}" in i.value
               for i in at.info)
    assert not at.button and not at.get("download_button")
    at = app("hardest", monkeypatch, v3.url, sweep="old")
    assert not [b for b in at.button_group if b.label in ("Review mark", "Group")]
    assert not [c for c in at.caption if c.value.startswith("review:")]
    at.button[0].click().run()  # one image across every trial: its row read without images.path
    assert not at.error and any(s.value.endswith("across every architecture and trial") for s in at.subheader)
    at.radio(key="gallery_view").set_value("Hard for every model").run()
    assert not at.error and not [t for t in at.toggle if t.label == "Leave out likely label errors"]
    assert not app("home", monkeypatch, v3.url, sweep="old").error
    assert path.read_bytes() == before


def test_the_dashboard_is_read_only_when_started_so_by_flag_or_environment(monkeypatch) -> None:
    import sys

    from dashboard import common

    monkeypatch.delenv(common.READ_ONLY_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["dashboard/Home.py"])
    assert not common.started_read_only()
    monkeypatch.setattr(sys, "argv", ["dashboard/Home.py", "--read-only"])  # streamlit run Home.py -- --read-only
    assert common.started_read_only()
    monkeypatch.setattr(sys, "argv", ["dashboard/Home.py"])
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(common.READ_ONLY_ENV, value)
        assert common.started_read_only() is expected


def test_an_overlay_from_a_trimap_of_another_size_than_its_photo_matches_what_was_scored(tmp_path) -> None:
    """An older store keeps no truth: the overlay rebuilds it from the trimap by the evaluation's own rule
    (to the photo's size first, then to the evaluation size), not by one resize that rounds differently."""
    from core.data.dataset import decoded
    from core.data.layout import trimap_foreground

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "trimaps").mkdir(parents=True)
    photo = Image.new("RGB", (30, 20), (120, 90, 60))
    photo.save(tmp_path / "images" / "a_1.jpg")
    trimap = np.full((13, 11), 2, np.uint8)  # 11 x 13 px, another size and aspect than its 30 x 20 photo
    trimap[1:11, 1:6] = 1
    Image.fromarray(trimap).save(tmp_path / "annotations" / "trimaps" / "a_1.png")
    scored = decoded(photo, trimap_foreground(trimap), 16).mask  # what training and evaluation use
    one_step = trimap_foreground(np.asarray(Image.fromarray(trimap).resize((16, 16), Image.Resampling.NEAREST)))
    assert scored.tolist() != one_step.tolist()  # the case where a single resize would differ
    p = images.make_panels(images.image_files(str(tmp_path), "a_1", None, True), 16, 16, [scored])
    assert (p.truth[..., 0] == 255).tolist() == scored.tolist()
