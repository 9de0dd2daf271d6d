"""The recipe ablation (issue 14, part 5): its params checks, its plan, its runs on the
sample, and verdicts made on validation only, beyond both the CI and the seed spread."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from bloodcells import ablation, ablation_report, estimate, plan
from bloodcells.config import ParamsError, load_params
from tests.conftest import ROOT, mini_project


@pytest.fixture()
def on_demand():
    """The default profile with the ablation run, as `dvc exp run -S ablation.run=all`."""
    params = load_params(ROOT / "params.yaml", profile="cpu")
    params["ablation"]["run"] = ablation.ALL
    return params


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base": "hybrid"}, r"'ablation\.base' is 'hybrid'; it must name a 'models' entry"),
        ({"base": "resnet"}, r"'ablation\.base' is 'resnet'"),
        ({"seeds": [42]}, r"'ablation\.seeds' must list two or more distinct integers"),
        ({"seeds": [42, 42]}, r"'ablation\.seeds' must list two or more distinct integers"),
        ({"epochs": 0}, r"'ablation\.epochs' must be null \(the base's own\) or an integer"),
        ({"changes": ["ema"]}, r"'ablation\.changes' must be a mapping of name to settings"),
        ({"changes": {"base": {"dropout": 0.2}}}, r"'ablation\.changes\.base': a change's name"),
        ({"changes": {"Big-LR": {"dropout": 0.2}}}, r"'ablation\.changes\.Big-LR': a change's"),
        ({"changes": {"x": {}}}, r"'ablation\.changes\.x' must map one or more settings"),
        ({"changes": {"x": {"momentum": 0.9}}}, r"'ablation\.changes\.x' sets momentum; a chan"),
        ({"run": True}, r"'ablation\.run' must be 'all' or a list of distinct names from"),
        ({"run": ["ema", "ema"]}, r"'ablation\.run' must be 'all' or a list of distinct"),
        ({"run": ["emma"]}, r"'ablation\.changes' \(ema, warmup, .*\[\] trains nothing\); got"),
        ({"changes": {"x": {"image_size": 48}}}, r"'ablation\.changes\.x\.image_size' is 48, wh"),
        (
            {"changes": {"x": {"ema_momentum": 1.5}}},
            r"'models\.cnn\.ema_momentum'.*got 1\.5\. \(from 'ablation\.changes\.x'\)",
        ),
        (
            {"changes": {"x": {"whitening": 5}}},
            r"'models\.cnn\.whitening'.*is 5; allowed.*\(from 'ablation\.changes\.x'\)",
        ),
        (
            {"changes": {"x": {"conv_widths": [8] * 7}}},
            r"conv_widths.*\(from 'ablation\.changes\.x'\)",
        ),
    ],
)
def test_bad_settings_name_the_key(on_demand, change, message):
    params = on_demand
    params["ablation"].update(change)
    with pytest.raises(ParamsError, match=message):
        ablation.check_params(params["ablation"], params)


def test_no_cpu_profile_runs_it_and_run_selects_the_changes(on_demand):
    for profile in ("smoke", "cpu", "overnight", "paper"):
        params = load_params(ROOT / "params.yaml", profile=profile)
        assert ablation.check_params(params["ablation"], params) is params["ablation"]
    for profile in ("cpu", "overnight"):  # on demand only: neither budget has its hours
        params = load_params(ROOT / "params.yaml", profile=profile)
        assert params["ablation"]["run"] == [] and len(params["ablation"]["changes"]) >= 7
        assert ablation.plan(params) == [] and plan.sizes_used(params, "ablation") == []
        assert not [
            r for r in estimate.study_runs(params, 100, 20, 30) if r.stage == "train-ablation"
        ]
    # one change, as `-S 'ablation.run=[warmup]'`: the base and it, under every seed
    on_demand["ablation"]["run"] = ["warmup"]
    assert [r["variant"] for r in ablation.plan(on_demand)] == [
        f"{name}_s{seed}" for name in ("base", "warmup") for seed in (42, 43, 44)
    ]
    # nothing run: one seed is enough, and a change that does not fit the base is checked
    # only once it is selected (smoke's 32 px CNN cannot grow from 64 px)
    smoke = load_params(ROOT / "params.yaml", profile="smoke")
    smoke["ablation"].update(seeds=[42], run=[])
    assert ablation.check_params(smoke["ablation"], smoke) and ablation.plan(smoke) == []
    smoke["ablation"].update(seeds=[42, 43], run=["progressive"])
    with pytest.raises(ParamsError, match=r"progressive_from.*\(from 'ablation\.changes\.progr"):
        ablation.check_params(smoke["ablation"], smoke)


def test_the_plan_and_each_runs_config(on_demand):
    section = on_demand["ablation"]
    runs = ablation.plan(on_demand)
    names = ["base", *section["changes"]]
    assert [(r["change"], r["seed"]) for r in runs] == [
        (n, s) for n in names for s in section["seeds"]
    ]
    assert {r["variant"] for r in runs} == {f"{n}_s{s}" for n in names for s in section["seeds"]}
    base = ablation.config(on_demand, section, "base", 43)
    own = load_params(ROOT / "params.yaml", profile="cpu")["models"]["cnn"]
    assert (base.epochs, base.seed, base.label_smoothing) == (section["epochs"], 43, 0.1)
    assert base.conv_widths == own["conv_widths"] and base.ema_momentum == 0.0
    for name, settings in section["changes"].items():
        cfg = ablation.config(on_demand, section, name, 43)
        for key, value in settings.items():
            assert getattr(cfg, key) == value
        # everything else is the base's
        same = {k: v for k, v in vars(base).items() if k not in settings}
        assert {k: getattr(cfg, k) for k in same} == same
    # the estimate plans every run at the study's epochs, at the base's size
    planned = [
        r for r in estimate.study_runs(on_demand, 100, 20, 30) if r.stage == "train-ablation"
    ]
    assert len(planned) == len(runs) and {r.epochs for r in planned} == {section["epochs"]}
    assert plan.sizes_used(on_demand, "ablation") == [own["image_size"]]


def _runs(val_y, accs: dict[str, list[float]], rng) -> pd.DataFrame:
    """Planted runs: each change's per-seed validation accuracy, as per-image correctness."""
    rows = []
    for change, per_seed in accs.items():
        for seed, acc in zip((42, 43, 44), per_seed, strict=True):
            correct = np.zeros(len(val_y), bool)
            correct[rng.permutation(len(val_y))[: round(acc * len(val_y))]] = True
            rows.append(
                {
                    "change": change,
                    "settings": "-" if change == "base" else f"{change} 1",
                    "seed": seed,
                    "epochs": 4,
                    "image size": 96,
                    "val accuracy": correct.mean(),
                    "train minutes": 5.0,
                    "val_y": val_y,
                    "correct": correct,
                }
            )
    return pd.DataFrame(rows)


def test_verdicts_need_both_the_ci_and_the_seed_spread():
    rng = np.random.default_rng(0)
    val_y = np.arange(2000) % 8
    runs = _runs(
        val_y,
        {
            "base": [0.90, 0.91, 0.89],
            "steady": [0.95, 0.96, 0.94],  # +5 points every seed: kept
            "erratic": [0.99, 0.90, 0.96],  # +5 on average, sd 4.6: within the noise
            "worse": [0.85, 0.86, 0.84],  # -5 every seed
            "tiny": [0.902, 0.912, 0.892],  # +0.2 every seed: within the CI
        },
        rng,
    )
    table = ablation_report.ablation_table(runs, n_bootstrap=500)
    assert list(table.index) == ["base", "steady", "erratic", "worse", "tiny"]
    assert table.loc["base", "val accuracy mean"] == pytest.approx(90.0, abs=0.01)
    assert table.loc["steady", "vs base (points)"] == pytest.approx(5.0, abs=0.01)
    assert table.loc["steady", "verdict"] == "kept: helps"
    assert (
        table.loc["erratic", "beyond the CI"] and not table.loc["erratic", "beyond the seed spread"]
    )
    assert table.loc["erratic", "verdict"] == "dropped: within the noise"
    assert table.loc["worse", "verdict"] == "dropped: hurts"
    assert not table.loc["tiny", "beyond the CI"]
    assert table.loc["tiny", "verdict"] == "dropped: within the noise"
    assert ablation_report.kept(table) == ["steady"]
    text = ablation_report.conclusion(table)
    assert "steady (steady 1): +5.00 points" in text and text.endswith("Kept: steady.")


def test_the_ablation_trains_on_the_sample_and_chooses_on_validation(
    tmp_path, built, sample_dir, monkeypatch
):
    """Real runs on the sample; then their test predictions are planted to disagree with
    validation: the verdicts do not move, since the test split is never read."""
    root = mini_project(tmp_path, built[0], sample_dir)
    params = copy.deepcopy(load_params(ROOT / "params.yaml", profile="smoke"))
    params["ablation"].update(changes={"ema": {"ema_momentum": 0.9}}, run=ablation.ALL)
    section = ablation.check_params(params["ablation"], params)
    planned = ablation.train_ablation(params, root, verbose=0)
    assert [r["variant"] for r in planned] == ["base_s42", "base_s43", "ema_s42", "ema_s43"]
    for run in planned:
        record = json.loads((root / "models/ablation" / run["variant"] / "run.json").read_text())
        assert record["epochs"] == section["epochs"] and record["seed"] == run["seed"]
        assert record["config"]["ema_momentum"] == (0.9 if run["change"] == "ema" else 0.0)
    saved = json.loads((root / "models/ablation/plan.json").read_text())["runs"]
    assert saved == planned

    runs = ablation_report.ablation_runs(root)
    table = ablation_report.ablation_table(runs, n_bootstrap=200)
    assert list(table.index) == ["base", "ema"] and table.loc["ema", "seeds"] == 2
    for variant in ("base_s42", "ema_s43"):  # plant test predictions that disagree
        path = root / "models/ablation" / variant / "predictions.npz"
        preds = dict(np.load(path))
        preds["test_probs"] = np.roll(preds["test_probs"], 1, axis=1)
        np.savez_compressed(path, **preds)
    again = ablation_report.ablation_table(ablation_report.ablation_runs(root), n_bootstrap=200)
    pd.testing.assert_frame_equal(table, again)

    # a change dropped from the section: its runs are pruned, the rest reused, not retrained
    mtimes = {p: p.stat().st_mtime for p in (root / "models/ablation").glob("base_s*/run.json")}
    params["ablation"]["changes"] = {"warmup": {"warmup_fraction": 0.2}}
    ablation.train_ablation(params, root, verbose=0)
    folders = sorted(p.name for p in (root / "models/ablation").iterdir() if p.is_dir())
    assert folders == ["base_s42", "base_s43", "warmup_s42", "warmup_s43"]
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes


def test_the_report_says_when_the_profile_does_not_run_it():
    cpu = load_params(ROOT / "params.yaml", profile="cpu")
    assert not ablation_report.is_run(cpu)
    note = ablation_report.not_run_note(cpu)
    assert note.startswith("Not run under profile `cpu`: `ablation.run` selects no change")
    assert "`dvc exp run -S ablation.run=all` trains it and nothing else" in note
    assert "under 3 seeds at 4 epochs" in note
    assert all(f"`{name}`" in note for name in cpu["ablation"]["changes"])
    body = ablation_report.summary(cpu, None)
    assert body == {"profile": "cpu", "run": False, "ablation": cpu["ablation"]}
    cpu["ablation"].update(run="all", changes={})
    assert not ablation_report.is_run(cpu)
    assert "`ablation.changes` is empty" in ablation_report.not_run_note(cpu)


def test_the_metrics_file_holds_no_wall_clock_figure():
    """metrics/ reproduces bit for bit (tests/test_dag.py): the minutes stay in the report."""
    rng = np.random.default_rng(1)
    runs = _runs(np.arange(800) % 8, {"base": [0.9, 0.91, 0.9], "x": [0.92, 0.93, 0.92]}, rng)
    table = ablation_report.ablation_table(runs, n_bootstrap=100)
    assert table.loc["x", "train minutes"] == 5.0
    smoke = load_params(ROOT / "params.yaml", profile="smoke")
    body = ablation_report.summary(smoke, table)
    assert set(body["changes"]) == {"base", "x"}
    assert not [k for e in body["changes"].values() for k in e if "minute" in k]
    assert body["changes"]["x"]["val_accuracy_mean"] == table.loc["x", "val accuracy mean"]
