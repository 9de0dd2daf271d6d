"""The seed spread (issue 16, part 3): training the planned seeds on the sample, reusing a
family's own run, and the verdicts of the report on planted predictions."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from bloodcells import experiment, seed_report, seeds
from bloodcells.config import ParamsError, load_params
from tests.conftest import ROOT, mini_project


@pytest.fixture(scope="module")
def smoke_params():
    return load_params(ROOT / "params.yaml", profile="smoke")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runs": ["resnet50"]}, r"'models.resnet50.optimizers' lists 2 optimizers"),
        ({"runs": ["lenet"]}, r"'seed_spread.runs' has 'lenet'; it must name a 'models' entry"),
        ({"seeds": [42]}, r"'seed_spread.seeds' must list two or more distinct integers"),
        ({"seeds": [42, 42]}, r"'seed_spread.seeds' must list two or more distinct integers"),
        ({"epochs": 0}, r"'seed_spread.epochs' must be null"),
    ],
)
def test_bad_sections_name_the_key(change, message):
    params = load_params(ROOT / "params.yaml", profile="cpu")
    section = {**params["seed_spread"], **change}
    with pytest.raises(ParamsError, match=message):
        seeds.check_params(section, params["models"])


def test_a_familys_own_seed_is_its_run_unless_the_epochs_differ(smoke_params):
    params = copy.deepcopy(smoke_params)
    params["seed_spread"] = {"runs": ["cnn"], "seeds": [42, 7], "epochs": None}
    assert [(r["key"], r["variant"]) for r in seeds.plan(params)] == [
        ("cnn", "cnn"),
        ("seed_spread", "cnn_s7"),
    ]
    params["seed_spread"]["epochs"] = 1  # the CNN's smoke recipe trains 2 epochs
    assert [(r["key"], r["variant"]) for r in seeds.plan(params)] == [
        ("seed_spread", "cnn_s42"),
        ("seed_spread", "cnn_s7"),
    ]


def test_supcon_is_seeded_with_its_control_and_the_hybrid_as_itself(smoke_params):
    params = copy.deepcopy(smoke_params)
    params["seed_spread"] = {"runs": ["hybrid", "supcon"], "seeds": [42, 7], "epochs": None}
    assert [(r["family"], r["key"], r["variant"]) for r in seeds.plan(params)] == [
        ("hybrid", "hybrid", "hybrid"),  # seed 42: stage 10's run
        ("hybrid", "seed_spread", "hybrid_s7"),
        ("supcon", "supcon", "supcon"),  # seed 42: stage 11's two runs
        ("supcon_ce_control", "supcon", "supcon_ce_control"),
        ("supcon", "seed_spread", "supcon_s7"),
        ("supcon_ce_control", "seed_spread", "supcon_ce_control_s7"),
    ]
    # the compared runs' names in the seed study: the control is a model of its own
    pairs = [("supcon", "supcon"), ("supcon", "supcon_ce_control"), ("resnet50", "resnet50_sgd")]
    runs = [{"key": k, "variant": v} for k, v in pairs]
    seeded = pd.DataFrame({"family": ["supcon", "supcon_ce_control"]})
    assert seed_report.family_of(runs, seeded) == {
        "supcon": "supcon", "supcon_ce_control": "supcon_ce_control", "resnet50_sgd": "resnet50"
    }  # fmt: skip


def test_supcon_and_its_control_train_under_another_seed(built, sample_dir, tmp_path, smoke_params):
    """Stage 11's recipe through the seed study: both runs under seed 43, in the study's
    folder, each another model than stage 11's own (seed 42) and with the same config
    otherwise; a rerun reuses them."""
    from bloodcells.supcon import train_supcon

    root = mini_project(tmp_path, built[0], sample_dir)
    params = copy.deepcopy(smoke_params)
    params["seed_spread"] = {"runs": ["supcon"], "seeds": [42, 43], "epochs": None}
    train_supcon(params, root, verbose=0)
    planned = seeds.train_seeds(params, root, verbose=0)
    assert sorted(p.name for p in (root / "models/seed_spread").iterdir()) == [
        "plan.json", "supcon_ce_control_s43", "supcon_s43"
    ]  # fmt: skip
    for own, other in [("supcon", "supcon_s43"), ("supcon_ce_control", "supcon_ce_control_s43")]:
        a = experiment.read_run("supcon", own, root)
        b = experiment.read_run("seed_spread", other, root)
        assert (a["seed"], b["seed"]) == (42, 43)
        assert a["config"] == {**b["config"], "seed": 42}
        pa = experiment.load_predictions("supcon", own, root)["val_probs"]
        pb = experiment.load_predictions("seed_spread", other, root)["val_probs"]
        assert not np.allclose(pa, pb)
    model = root / "models/seed_spread/supcon_s43/model.keras"
    before = model.stat().st_mtime_ns
    assert seeds.train_seeds(params, root, verbose=0) == planned
    assert model.stat().st_mtime_ns == before
    runs = seed_report.seed_runs(root)
    assert list(runs["family"]) == ["supcon", "supcon_ce_control"] * 2
    assert list(runs["trained by"]) == ["train-supcon"] * 2 + ["train-seeds"] * 2
    assert seed_report.seed_table(runs)["the compared run's config"].all()


def test_the_hybrid_is_trained_into_the_study_under_its_seed(monkeypatch, tmp_path, smoke_params):
    """Stage 10's recipe through the seed study: the run the study plans is the one
    ``hybrid.train_hybrid`` makes (``models/seed_spread/hybrid_s43``), under seed 43, its
    joint phase at the study's epochs and the frozen phase at the hybrid's own; seed 42 at
    the hybrid's own epochs is stage 10's run. (Training itself is the smoke DAG's
    ``train-hybrid``; here ``ensure_run`` records what it was asked for.)"""
    from bloodcells import hybrid

    asked = []

    def ensure_run(key, variant, cfg, train, root, verbose, **extra):
        asked.append((key, variant, cfg.seed, cfg.epochs, extra["frozen_epochs"]))
        return {}

    monkeypatch.setattr(hybrid, "ensure_run", ensure_run)
    monkeypatch.setattr(seeds, "write_json", lambda *a: None)
    params = copy.deepcopy(smoke_params)
    params["models"]["hybrid"]["from_stages"] = False  # no stage 08/09 runs here
    own, frozen = params["models"]["hybrid"]["epochs"], params["models"]["hybrid"]["frozen_epochs"]
    params["seed_spread"] = {"runs": ["hybrid"], "seeds": [42, 43], "epochs": None}
    planned = seeds.train_seeds(params, tmp_path, verbose=0)
    assert [(r["key"], r["variant"]) for r in planned] == [
        ("hybrid", "hybrid"),  # its own seed and epochs: stage 10's run, not trained here
        ("seed_spread", "hybrid_s43"),
    ]
    assert asked == [("seed_spread", "hybrid_s43", 43, own + frozen, frozen)]
    params["seed_spread"]["epochs"] = own + 2  # the study's epochs: the joint phase's
    asked.clear()
    seeds.train_seeds(params, tmp_path, verbose=0)
    assert asked == [
        ("seed_spread", f"hybrid_s{seed}", seed, own + 2 + frozen, frozen) for seed in (42, 43)
    ]


@pytest.fixture(scope="module")
def seeded(built, sample_dir, tmp_path_factory, smoke_params):
    """The smoke CNN trained by its stage (seed 42), then the seed study over seeds 42, 43."""
    root = mini_project(tmp_path_factory.mktemp("seeds"), built[0], sample_dir)
    params = copy.deepcopy(smoke_params)
    params["models"]["cnn"]["epochs"] = 1
    params["seed_spread"] = {"runs": ["cnn"], "seeds": [42, 43], "epochs": None}
    experiment.train_stage(params, "cnn", root, verbose=0)
    planned = seeds.train_seeds(params, root, verbose=0)
    return root, params, planned


def test_the_study_trains_the_other_seeds_and_reuses_the_familys_run(seeded):
    root, params, planned = seeded
    assert json.loads((root / "models/seed_spread/plan.json").read_text())["runs"] == planned
    assert sorted(p.name for p in (root / "models/seed_spread").iterdir()) == [
        "cnn_s43",
        "plan.json",
    ]  # seed 42 is models/cnn/cnn, not trained twice
    own = experiment.read_run("cnn", "cnn", root)
    other = experiment.read_run("seed_spread", "cnn_s43", root)
    assert (own["seed"], other["seed"]) == (42, 43)
    assert own["config"] == {**other["config"], "seed": 42}  # the seed alone differs
    p42 = experiment.load_predictions("cnn", "cnn", root)["val_probs"]
    p43 = experiment.load_predictions("seed_spread", "cnn_s43", root)["val_probs"]
    assert not np.allclose(p42, p43)  # another seed, another model


def test_a_rerun_reuses_the_runs_and_a_dropped_seed_is_pruned(seeded):
    root, params, _ = seeded
    model = root / "models/seed_spread/cnn_s43/model.keras"
    before = model.stat().st_mtime_ns
    seeds.train_seeds(params, root, verbose=0)
    assert model.stat().st_mtime_ns == before  # same training key: not retrained
    (root / "dvclive/seed_spread/cnn_s9").mkdir(parents=True)  # a seed since dropped
    seeds.prune_runs("seed_spread", {"cnn_s43"}, root)
    assert sorted(p.name for p in (root / "dvclive/seed_spread").iterdir()) == ["cnn_s43"]


def test_the_report_reads_every_planned_run(seeded):
    root, _, _ = seeded
    runs = seed_report.seed_runs(root)
    assert list(runs["seed"]) == [42, 43]
    assert list(runs["trained by"]) == ["train@cnn", "train-seeds"]
    y = experiment.load_predictions("cnn", "cnn", root)["test_y"]
    probs = experiment.load_predictions("seed_spread", "cnn_s43", root)["test_probs"]
    assert runs["test accuracy"].iloc[1] == pytest.approx((probs.argmax(1) == y).mean())
    table = seed_report.seed_table(runs)
    acc = 100 * runs["test accuracy"].to_numpy()
    assert table.loc["cnn", "test accuracy mean"] == pytest.approx(acc.mean(), abs=0.005)
    assert table.loc["cnn", "test accuracy sd"] == pytest.approx(acc.std(ddof=1), abs=0.005)


def planted(per_seed_accuracy: dict[str, list[float]], n: int = 2000) -> pd.DataFrame:
    """Seed runs whose test correctness has the given accuracy per seed (seeds 1, 2, 3...),
    every model right on a nested prefix of shuffled images (so pairs are paired)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    rows = []
    for family, accs in per_seed_accuracy.items():
        for seed, acc in enumerate(accs, start=1):
            correct = np.zeros(n, bool)
            correct[order[: round(acc * n)]] = True
            rows.append(
                {
                    "family": family,
                    "seed": seed,
                    "trained by": f"train@{family}" if seed == 1 else "train-seeds",
                    "own run": seed == 1,
                    "epochs": 1,
                    "val accuracy": acc,
                    "test accuracy": acc,
                    "test macro-F1": acc,
                    "test_y": np.zeros(n, int),
                    "correct": correct,
                }
            )
    return pd.DataFrame(rows)


def test_a_difference_is_real_only_beyond_both_the_ci_and_the_seed_spread():
    runs = planted(
        {
            "steady": [0.95, 0.951, 0.949],  # 5 points above "low" on every seed
            "low": [0.90, 0.899, 0.901],
            "noisy": [0.96, 0.89, 0.92],  # above "low" on average, below it on one seed
        }
    )
    verdicts = seed_report.pair_verdicts(runs, n_bootstrap=300).set_index(["model A", "model B"])
    steady_low = verdicts.loc[("steady", "low")]
    assert steady_low["beyond the CI"] and steady_low["beyond the seed spread"]
    assert steady_low["real"]
    assert steady_low["A - B (points)"] == pytest.approx(5.0, abs=0.01)
    noisy_low = verdicts.loc[("noisy", "low")]
    assert noisy_low["beyond the CI"]  # 2,000 images: a 2.3-point mean difference is clear
    assert not noisy_low["beyond the seed spread"] and not noisy_low["real"]
    # the per-seed differences' sd: 6, -0.9 and 1.9 points
    assert noisy_low["sd over seeds (points)"] == pytest.approx(
        np.std([6.0, -0.9, 1.9], ddof=1), abs=0.01
    )


def test_a_significant_leader_pair_without_a_seed_spread_is_not_real():
    runs = planted({"cnn": [0.95, 0.951, 0.949], "unet": [0.90, 0.899, 0.901]})
    verdicts = seed_report.pair_verdicts(runs, n_bootstrap=300)
    tests = pd.DataFrame(
        [
            {"model A": "cnn", "model B": "unet", "significant": True},
            {"model A": "cnn", "model B": "vgg16", "significant": True},
            {"model A": "unet", "model B": "cnn", "significant": False},
        ]
    )
    marked = seed_report.mark_pairs(tests, verdicts, {"cnn": "cnn", "unet": "unet"})
    assert list(marked["seed spread"]) == ["exceeded", "not measured", "exceeded"]
    assert list(marked["real"]) == [True, False, False]
    text = seed_report.conclusion(seed_report.seed_table(runs), verdicts, marked)
    assert "cnn 95.00% ± 0.10" in text and "1 real" in text


def test_seed_runs_at_other_epochs_are_called_a_stand_in(tmp_path):
    from bloodcells import site

    runs = planted({"cnn": [0.95, 0.951, 0.949], "unet": [0.90, 0.899, 0.901]})
    runs["trained by"] = ["train-seeds"] * 3 + ["train@unet", "train-seeds", "train-seeds"]
    runs["own run"] = runs["trained by"] != "train-seeds"
    table = seed_report.seed_table(runs)
    assert not table.loc["cnn", "the compared run's config"]
    assert table.loc["unet", "the compared run's config"]  # its own run is one of them
    verdicts = seed_report.pair_verdicts(runs, n_bootstrap=100)
    marked = seed_report.mark_pairs(pd.DataFrame(), verdicts, {})
    text = seed_report.conclusion(table, verdicts, marked)
    assert "cnn 95.00% ± 0.10 (3 seeds at 1 epoch(s), a stand-in for the run compared" in text
    assert "unet 90.00% ± 0.10 (3 seeds at 1 epoch(s), range" in text
    # the index puts the stand-in's spread beside the model only with its epochs named
    entry = seed_report.summary_entry(table, verdicts, marked)
    models = [
        {"model": m, "key": m, "test_accuracy": 0.9, "ci95": [0.8, 1.0], "macro_f1": 0.9,
         "image_size": 32, "epochs": 8, "weights": "none"}
        for m in ("cnn", "unet", "vgg16")
    ]  # fmt: skip
    summary = {
        "best_model": "cnn", "best_test_accuracy": 0.9, "best_test_accuracy_ci95": [0.8, 1.0],
        "best_macro_f1": 0.9, "models": models, "seed_spread": entry, "profile": "cpu",
        "data_hash": "x",
    }  # fmt: skip
    (tmp_path / "reports").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/summary.json").write_text(json.dumps(summary))
    index = site.build_index(tmp_path).read_text()
    assert "<td>95.00% ± 0.10 (3 seeds, 1-epoch runs)</td>" in index
    assert "<td>90.00% ± 0.10 (3 seeds)</td>" in index and "<td>one seed</td>" in index
