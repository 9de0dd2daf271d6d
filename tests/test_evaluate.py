"""Evaluation agrees with scikit-learn; CIs and calibration behave; provenance is complete."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from bloodcells.evaluate import bootstrap_ci, evaluate, expected_calibration_error, provenance


def known_case():
    # A fixed 3-class confusion matrix, expanded into labels and one-hot-ish probabilities.
    cm = np.array([[50, 3, 2], [4, 30, 6], [1, 5, 20]])
    y_true = np.repeat([0, 0, 0, 1, 1, 1, 2, 2, 2], cm.ravel())
    y_pred = np.repeat([0, 1, 2, 0, 1, 2, 0, 1, 2], cm.ravel())
    probs = np.full((len(y_true), 3), 0.1)
    probs[np.arange(len(y_true)), y_pred] = 0.8
    return cm, y_true, y_pred, probs


def test_metrics_agree_with_scikit_learn():
    cm, y_true, y_pred, probs = known_case()
    ev = evaluate(y_true, probs, ("a", "b", "c"), n_bootstrap=200)
    assert ev["confusion_matrix"] == cm.tolist()
    assert np.isclose(ev["accuracy"], accuracy_score(y_true, y_pred))
    assert np.isclose(ev["accuracy"], 100 / 121)
    for avg in ("macro", "weighted"):
        assert np.isclose(ev[f"{avg}_f1"], f1_score(y_true, y_pred, average=avg))
        assert np.isclose(ev[f"{avg}_precision"], precision_score(y_true, y_pred, average=avg))
        assert np.isclose(ev[f"{avg}_recall"], recall_score(y_true, y_pred, average=avg))
    assert np.isclose(ev["balanced_accuracy"], np.mean([50 / 55, 30 / 40, 20 / 26]))
    assert ev["per_class"]["b"]["support"] == 40
    np.testing.assert_allclose(
        np.array(ev["confusion_matrix_normalized"]).sum(axis=1), 1, atol=1e-3
    )


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_n():
    _, y_true, y_pred, _ = known_case()
    ci = bootstrap_ci(y_true, y_pred, 3, n_bootstrap=500, seed=1)
    acc = accuracy_score(y_true, y_pred)
    f1 = f1_score(y_true, y_pred, average="macro")
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    assert ci["macro_f1"][0] < f1 < ci["macro_f1"][1]
    big = bootstrap_ci(np.tile(y_true, 10), np.tile(y_pred, 10), 3, n_bootstrap=500, seed=1)
    assert big["accuracy"][1] - big["accuracy"][0] < ci["accuracy"][1] - ci["accuracy"][0]


def test_ece():
    y = np.array([0, 1, 0, 1])
    perfect = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(y, perfect) == 0.0
    # always 90% sure, right half the time: |0.5 - 0.9| = 0.4
    overconfident = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    assert np.isclose(expected_calibration_error(y, overconfident), 0.4)


def test_provenance_records_code_params_data_libraries_and_hardware():
    prov = provenance({"profile": "smoke", "a": 1}, "abc")
    assert {"git_commit", "params_hash", "data_hash", "libraries", "hardware"} <= set(prov)
    assert prov["data_hash"] == "abc" and prov["profile"] == "smoke"
    assert prov["libraries"]["tensorflow"] and prov["hardware"]["cores"] >= 1
