"""Calibration: reliability curves and temperature scaling fitted on the validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from bloodcells.evaluate import confidence_bins, expected_calibration_error


def reliability_curve(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Per confidence bin: mean confidence, accuracy and count (empty bins dropped)."""
    return pd.DataFrame(confidence_bins(y, probs, n_bins))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of log-probabilities divided by ``temperature``."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` (validation data)."""

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def calibration_table(runs: list[dict], n_bins: int = 15) -> pd.DataFrame:
    """ECE on the test split before and after temperature scaling fitted on validation."""
    rows = []
    for r in runs:
        p = r["predictions"]
        t = fit_temperature(p["val_probs"], p["val_y"])
        scaled = apply_temperature(p["test_probs"], t)
        rows.append(
            {
                "model": r["variant"],
                "temperature (fit on val)": round(t, 3),
                "test ECE before": round(
                    expected_calibration_error(p["test_y"], p["test_probs"], n_bins), 4
                ),
                "test ECE after": round(expected_calibration_error(p["test_y"], scaled, n_bins), 4),
                "test accuracy (unchanged)": round(
                    float((scaled.argmax(1) == p["test_y"]).mean()), 4
                ),
            }
        )
    return pd.DataFrame(rows).set_index("model")
