"""The compute-matched comparison (issue 16, part 4): its params checks, one protocol for
every family, training the planned runs on the sample, and its report."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from bloodcells import estimate, experiment, matched, matched_report, plan, seed_report
from bloodcells.config import ParamsError, load_params
from tests.conftest import ROOT, mini_project
from tests.test_seeds import planted


@pytest.fixture(scope="module")
def overnight():
    return load_params(ROOT / "params.yaml", profile="overnight")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"families": ["hybrid"]}, r"'compute_matched.families' has 'hybrid'; it must name one"),
        ({"families": ["cnn", "cnn"]}, r"'compute_matched.families' must be a list of distinct"),
        ({"image_size": 48}, r"'compute_matched.image_size' is 48, which is not among the cached"),
        ({"image_size": 64}, r"compute_matched.image_size.*inceptionv3|inceptionv3.*75"),
        ({"epochs": 0}, r"'compute_matched.epochs' must be an integer >= 1"),
        ({"seeds": []}, r"'compute_matched.seeds' must list one or more distinct integers"),
        ({"recipe": {"optimizer": "adam"}}, r"'compute_matched.recipe' must set exactly"),
        ({"recipe": "adam"}, r"'compute_matched.recipe' must set exactly"),
    ],
)
def test_bad_sections_name_the_key(overnight, change, message):
    section = {**overnight["compute_matched"], **change}
    with pytest.raises(ParamsError, match=message):
        matched.check_params(section, overnight["models"], overnight["preprocess"]["image_sizes"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optimizer", "adagrad", r"'compute_matched.recipe.optimizer' is 'adagrad'"),
        ("balance", "undersample", r"'compute_matched.recipe.balance' is 'undersample'"),
        ("label_smoothing", 1.5, r"label_smoothing.*\(from 'compute_matched.recipe'\)"),
    ],
)
def test_a_bad_recipe_value_names_the_recipe(overnight, key, value, message):
    section = copy.deepcopy(overnight["compute_matched"])
    section["recipe"][key] = value
    with pytest.raises(ParamsError, match=message):
        matched.check_params(section, overnight["models"], overnight["preprocess"]["image_sizes"])


def test_every_family_trains_one_protocol_whatever_its_own_recipe(overnight):
    section, models = overnight["compute_matched"], overnight["models"]
    # the families' own recipes differ: sizes, epochs, optimizers, learning rates, heads
    assert (
        models["vgg16"]["learning_rate"] == 0.0001 and models["resnet50"]["optimizers"][0] == "sgd"
    )
    assert len({models[f]["image_size"] for f in section["families"]}) > 1
    configs = {f: asdict(matched.config(section, models, f, 43)) for f in section["families"]}
    protocol = {**section["recipe"], "image_size": 80, "epochs": section["epochs"], "seed": 43}
    for family, cfg in configs.items():
        assert {k: cfg[k] for k in protocol} == protocol, family
        assert (cfg["weights"], cfg["frozen_fraction"]) == ("none", 0.0)
        assert cfg["family"] == family
    # beyond the family, only the CNN's architecture (its conv widths) differs
    strip = ("family", "conv_widths")
    reference = {k: v for k, v in configs["vgg16"].items() if k not in strip}
    for family, cfg in configs.items():
        assert {k: v for k, v in cfg.items() if k not in strip} == reference, family
    assert configs["cnn"]["conv_widths"] == models["cnn"]["conv_widths"]


def test_the_stage_reads_the_architecture_not_the_recipe_of_a_family(overnight):
    def resolved(params):
        return plan.stage_params(params, overnight)["compute_matched"]

    before = resolved(overnight)
    edited = copy.deepcopy(overnight)
    edited["models"]["vgg16"]["learning_rate"] = 0.5  # the family's own recipe
    edited["models"]["xception"]["epochs"] = 9
    assert resolved(edited) == before
    edited["models"]["cnn"]["conv_widths"] = [8, 16, 32, 64, 128]  # the CNN's architecture
    assert resolved(edited) != before
    assert plan.sizes_used(overnight, "compute_matched") == [80]
    cpu = load_params(ROOT / "params.yaml", profile="cpu")
    assert plan.sizes_used(cpu, "compute_matched") == []  # not run: reads no array


def test_the_estimate_counts_every_run_of_the_study(overnight):
    runs = [r for r in estimate.plan(overnight, 900, 200, 500) if r.stage == matched.STAGE]
    section = overnight["compute_matched"]
    assert len(runs) == len(section["families"]) * len(section["seeds"])
    assert {r.epochs for r in runs} == {section["epochs"]}
    cfg = runs[0].config(overnight)
    assert (cfg.image_size, cfg.optimizer, cfg.learning_rate) == (80, "adam", 0.001)
    cpu = load_params(ROOT / "params.yaml", profile="cpu")
    assert not [r for r in estimate.plan(cpu, 900, 200, 500) if r.stage == matched.STAGE]


@pytest.fixture(scope="module")
def trained(built, sample_dir, tmp_path_factory):
    """The smoke profile's study (cnn and mobilenetv2, seeds 42 and 43) on the sample."""
    root = mini_project(tmp_path_factory.mktemp("matched"), built[0], sample_dir)
    params = load_params(ROOT / "params.yaml", profile="smoke")
    assert params["compute_matched"]["families"] == ["cnn", "mobilenetv2"]
    planned = matched.train_matched(params, root, verbose=0)
    return root, params, planned


def test_the_study_trains_every_family_under_every_seed(trained):
    root, params, planned = trained
    assert json.loads((root / "models/compute_matched/plan.json").read_text())["runs"] == planned
    assert [r["variant"] for r in planned] == [
        "cnn_s42",
        "cnn_s43",
        "mobilenetv2_s42",
        "mobilenetv2_s43",
    ]
    records = {
        r["variant"]: experiment.read_run("compute_matched", r["variant"], root) for r in planned
    }
    assert {(r["image_size"], r["epochs"], r["optimizer"]) for r in records.values()} == {
        (32, 1, "adam")
    }
    assert records["cnn_s42"]["config"] == {**records["cnn_s43"]["config"], "seed": 42}
    p42 = experiment.load_predictions("compute_matched", "cnn_s42", root)["val_probs"]
    p43 = experiment.load_predictions("compute_matched", "cnn_s43", root)["val_probs"]
    assert not np.allclose(p42, p43)  # another seed, another model


def test_the_report_ranks_the_trained_runs(trained):
    root, params, _ = trained
    runs = matched_report.matched_runs(root)
    assert len(runs) == 4 and runs["train minutes"].notna().all()
    assert all(len(c) == 1 for c in runs["val curve"])  # one epoch: one point per run
    table = matched_report.ranking(runs)
    assert list(table["rank"]) == [1, 2]
    assert list(table.index) == list(
        runs.groupby("family")["val accuracy"].mean().sort_values(ascending=False).index
    )
    y = experiment.load_predictions("compute_matched", "cnn_s43", root)["test_y"]
    probs = experiment.load_predictions("compute_matched", "cnn_s43", root)["test_probs"]
    row = runs[(runs["family"] == "cnn") & (runs["seed"] == 43)].iloc[0]
    assert row["test accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    curves = matched_report.curves(runs)
    assert len(curves) == 4 and (curves["train minutes"] == runs["train minutes"]).all()
    pairs = seed_report.pair_verdicts(runs, n_bootstrap=50)
    body = matched_report.summary(params, table, pairs)
    assert body["run"] and set(body["families"]) == {"cnn", "mobilenetv2"}


def test_the_ranking_follows_validation_not_test():
    runs = planted({"a": [0.90, 0.91, 0.89], "b": [0.95, 0.94, 0.96]})
    runs["val accuracy"] = np.where(runs["family"] == "a", 0.97, 0.80)  # a wins on validation
    runs["train minutes"] = 1.0
    runs["parameters"] = 1000
    table = matched_report.ranking(runs)
    assert list(table.index) == ["a", "b"] and list(table["rank"]) == [1, 2]
    assert table.loc["b", "test accuracy mean"] > table.loc["a", "test accuracy mean"]


def test_one_seed_calls_nothing_real_and_three_can(overnight):
    runs = planted({"a": [0.95, 0.951, 0.949], "b": [0.90, 0.899, 0.901]})
    runs["train minutes"], runs["parameters"] = 2.0, 1000
    section = overnight["compute_matched"]
    table = matched_report.ranking(runs)
    pairs = seed_report.pair_verdicts(runs, n_bootstrap=200)
    text = matched_report.conclusion(table, pairs, section)
    assert "1. a 95.00% ± 0.10 (2.0 min); 2. b 90.00% ± 0.10" in text
    assert "1 differ beyond both" in text and "a > b" in text
    one = runs[runs["seed"] == 1]
    table1 = matched_report.ranking(one)
    pairs1 = seed_report.pair_verdicts(one, n_bootstrap=200)
    assert not pairs1["real"].any()
    text1 = matched_report.conclusion(table1, pairs1, {**section, "seeds": [1]})
    assert "no difference is called real" in text1
    assert (
        matched_report.summary({"profile": "x", "compute_matched": section}, table1, pairs1)[
            "families"
        ]["a"]["test_accuracy_sd"]
        is None
    )


def test_a_profile_without_the_study_points_to_the_one_that_runs_it():
    cpu = load_params(ROOT / "params.yaml", profile="cpu")
    assert not matched_report.is_run(cpu)
    note = matched_report.not_run_note(cpu)
    assert "Not run under profile `cpu`" in note and "overnight" in note
    assert "80 px, 2 epoch(s)" in note
    body = matched_report.summary(cpu, None, None)
    assert body["run"] is False and "families" not in body


def test_the_curves_plot_one_line_per_run():
    curves = pd.DataFrame(
        {
            "family": ["a", "a", "a", "a", "b", "b"],
            "seed": [1, 1, 2, 2, 1, 1],
            "epoch": [1, 2, 1, 2, 1, 2],
            "train minutes": [1, 2, 1.1, 2.2, 3, 6],
            "val accuracy": [80, 85, 79, 86, 70, 90],
        }
    )
    fig = matched_report.accuracy_vs_minutes(curves)
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_a_rerun_reuses_the_runs_and_a_dropped_family_is_pruned(trained):
    # last in this module: it removes runs the report tests read
    root, params, _ = trained
    model = root / "models/compute_matched/cnn_s43/model.keras"
    before = model.stat().st_mtime_ns
    fewer = copy.deepcopy(params)
    fewer["compute_matched"]["families"] = ["cnn"]
    planned = matched.train_matched(fewer, root, verbose=0)
    assert model.stat().st_mtime_ns == before  # same training key: not retrained
    assert sorted(p.name for p in (root / "models/compute_matched").iterdir()) == [
        "cnn_s42",
        "cnn_s43",
        "plan.json",
    ]
    assert len(planned) == 2
    assert not (root / "dvclive/compute_matched/mobilenetv2_s42").exists()
