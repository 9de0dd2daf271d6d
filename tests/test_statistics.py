"""The comparison's statistics against references: McNemar and Holm against statsmodels,
temperature scaling against a known temperature and a brute-force search, the reliability
curve and ECE against hand-computed bins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from bloodcells.calibration import apply_temperature, fit_temperature, reliability_curve
from bloodcells.evaluate import expected_calibration_error
from bloodcells.statistics import holm, mcnemar, paired_difference


def paired(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of models A and B on the same images, from a 2 x 2 table."""
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, bool)
    order = np.random.default_rng(both + only_a).permutation(len(a))
    return a[order], b[order]


@pytest.mark.parametrize(
    "table",
    [(5000, 0, 0, 100), (5000, 1, 9, 100), (4800, 40, 20, 263), (4900, 17, 17, 189), (10, 0, 6, 3)],
)
def test_mcnemar_matches_statsmodels_exact(table):
    both, only_a, only_b, neither = table
    a, b = paired(*table)
    got_a, got_b, p = mcnemar(a, b)
    assert (got_a, got_b) == (only_a, only_b)
    reference = sm_mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue
    assert p == pytest.approx(reference, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("table", [(4800, 40, 20, 263), (4000, 150, 90, 700), (3000, 30, 60, 500)])
def test_paired_difference_matches_the_wald_interval_of_paired_proportions(table):
    """On large paired samples the bootstrap CI meets the textbook interval of a difference
    of paired proportions: (b - c) / n +- 1.96 sqrt(b + c - (b - c)^2 / n) / n."""
    a, b = paired(*table)
    n, only_a, only_b = len(a), table[1], table[2]
    diff, lo, hi = paired_difference(a, b, n_bootstrap=20000, seed=1)
    assert diff == pytest.approx((only_a - only_b) / n)
    se = np.sqrt(only_a + only_b - (only_a - only_b) ** 2 / n) / n
    assert lo == pytest.approx(diff - 1.96 * se, abs=0.12 * se)
    assert hi == pytest.approx(diff + 1.96 * se, abs=0.12 * se)
    # pairing matters: the unpaired interval of two accuracies this high is far wider
    unpaired = np.sqrt(a.mean() * (1 - a.mean()) / n + b.mean() * (1 - b.mean()) / n)
    assert hi - lo < 0.8 * 2 * 1.96 * unpaired


def test_paired_difference_over_seeds_pairs_each_seed_and_checks_shapes():
    a1, b1 = paired(80, 10, 0, 10)
    a2, b2 = paired(80, 0, 10, 10)
    diff, lo, hi = paired_difference(np.stack([a1, a2]), np.stack([b1, b2]), 2000)
    assert diff == pytest.approx(0.0)  # +10 points at one seed, -10 at the other
    assert lo <= 0 <= hi
    same, lo, hi = paired_difference(a1, a1, 500)
    assert (same, lo, hi) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="different shapes"):
        paired_difference(a1, np.stack([b1, b2]))


def test_mcnemar_by_hand():
    # 1 against 9 discordant pairs: p = 2 * P(X <= 1), X ~ Binomial(10, 1/2) = 2 * 11 / 1024
    assert mcnemar(*paired(100, 1, 9, 5))[2] == pytest.approx(22 / 1024)


def test_holm_matches_statsmodels():
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 10, 45):
        p = rng.uniform(0, 0.2, m).tolist()
        reference = multipletests(p, method="holm")[1]
        np.testing.assert_allclose(holm(p), reference, rtol=1e-12)
    # R's p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm")
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_recovers_a_planted_temperature(true_t):
    """Labels drawn from softmax(z); the model reports softmax(z / true_t): fitting must
    find true_t back (it divides the log-probabilities by T)."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2.0, (20000, 8))
    y = (rng.random((len(z), 1)) < softmax(z).cumsum(axis=1)).argmax(axis=1)  # y ~ softmax(z)
    reported = softmax(z / true_t)
    t = fit_temperature(reported, y)
    assert t == pytest.approx(1 / true_t, rel=0.05)
    np.testing.assert_allclose(apply_temperature(reported, 1 / true_t), softmax(z), atol=1e-9)

    def nll(temp: float) -> float:
        p = apply_temperature(reported, temp)
        return float(-np.log(p[np.arange(len(y)), y]).mean())

    # the bounded search finds the minimum: no point of a grid over its whole range (steps
    # of 3%) does better, and the grid's best is within one step of it
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 201))
    losses = [nll(g) for g in grid]
    assert nll(t) <= min(losses) + 1e-9
    assert t == pytest.approx(grid[np.argmin(losses)], rel=0.031)


def test_temperature_one_keeps_probabilities():
    p = softmax(np.random.default_rng(1).normal(size=(50, 8)))
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)


def test_reliability_curve_and_ece_by_hand():
    # 4 bins of width 0.25. Confidences 0.3, 0.3 (bin 2), 0.6 (bin 3), 0.9, 0.95 (bin 4).
    top = np.array([0.3, 0.3, 0.6, 0.9, 0.95])
    probs = np.zeros((5, 4))
    probs[:, 0] = top
    probs[:, 1:] = ((1 - top) / 3)[:, None]
    y = np.array([0, 1, 0, 0, 2])  # right, wrong, right, right, wrong
    curve = reliability_curve(y, probs, n_bins=4)
    assert curve["count"].tolist() == [2, 1, 2]
    np.testing.assert_allclose(curve["confidence"], [0.3, 0.6, 0.925])
    np.testing.assert_allclose(curve["accuracy"], [0.5, 1.0, 0.5])
    ece = (2 * abs(0.5 - 0.3) + 1 * abs(1.0 - 0.6) + 2 * abs(0.5 - 0.925)) / 5
    assert expected_calibration_error(y, probs, n_bins=4) == pytest.approx(ece)


def test_calibrated_predictions_lie_on_the_diagonal():
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(0, 2.0, (40000, 8)))
    y = np.array([rng.choice(8, p=p) for p in probs])  # labels drawn from the predictions
    curve = reliability_curve(y, probs)
    full = curve[curve["count"] > 1000]
    np.testing.assert_allclose(full["accuracy"], full["confidence"], atol=0.03)
    assert expected_calibration_error(y, probs) < 0.02
    # the same labels, reported overconfidently: accuracy falls below confidence
    sharp = apply_temperature(probs, 0.5)
    assert expected_calibration_error(y, sharp) > 0.05
    assert (
        reliability_curve(y, sharp)["accuracy"] <= reliability_curve(y, sharp)["confidence"] + 0.01
    ).all()


def test_mcnemar_pairs_are_the_leaders_on_validation():
    """Planted: the best on validation are the worst on test; validation picks the pairs."""
    from bloodcells.compare import pairwise_mcnemar, selected

    y = np.arange(100) % 8

    def run(name, val, test):
        right = np.random.default_rng(len(name)).random(100) < test
        pred = np.where(right, y, (y + 1) % 8)
        return {
            "variant": name,
            "val_accuracy": val,
            "test": {"accuracy": float(right.mean())},
            "predictions": {"test_y": y, "test_probs": np.eye(8)[pred]},
        }

    runs = [run("a", 0.9, 0.5), run("bb", 0.8, 0.6), run("ccc", 0.7, 0.99)]
    table = pairwise_mcnemar(runs, top=2)
    assert table[["model A", "model B"]].values.tolist() == [["a", "bb"]]
    assert selected(runs)["variant"] == "a"


def test_temperature_is_fitted_on_validation_only():
    """Planted: validation needs T = 2, test would need T = 0.5; the table fits on validation."""
    from bloodcells.calibration import calibration_table

    rng = np.random.default_rng(4)

    def split(true_t):
        z = rng.normal(0, 2.0, (5000, 8))
        y = (rng.random((len(z), 1)) < softmax(z).cumsum(axis=1)).argmax(axis=1)  # y ~ softmax(z)
        return softmax(z / true_t), y  # reported with 1 / true_t too much confidence

    val_probs, val_y = split(0.5)
    test_probs, test_y = split(2.0)
    run = {
        "variant": "m",
        "predictions": {"val_probs": val_probs, "val_y": val_y,
                        "test_probs": test_probs, "test_y": test_y},
    }  # fmt: skip
    row = calibration_table([run]).loc["m"]
    assert row["temperature (fit on val)"] == pytest.approx(2.0, rel=0.06)
    assert fit_temperature(test_probs, test_y) == pytest.approx(0.5, rel=0.06)


def test_the_exported_model_is_the_one_best_on_validation():
    from bloodcells.compare import summary

    def run(name, val, test):
        return {
            "variant": name,
            "key": name,
            "val_accuracy": val,
            "test": {"accuracy": test, "macro_f1": test,
                     "ci95": {"accuracy": [test, test], "macro_f1": [test, test]}},
            "image_size": 32,
            "epochs": 1,
            "weights": "none",
            "provenance": {"profile": "smoke", "data_hash": "x"},
        }  # fmt: skip

    runs = [run("best_on_test", 0.80, 0.99), run("best_on_val", 0.95, 0.70)]
    out = summary(runs, pd.DataFrame())
    assert out["best_model"] == "best_on_val" and out["best_chosen_by"] == "validation accuracy"
    assert out["best_test_accuracy"] == 0.70  # reported as it is, not replaced by the better
