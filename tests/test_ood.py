"""Out-of-distribution flags: thresholds from validation, colour statistics from training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bloodcells import ood
from bloodcells.preprocess import load_resized


@pytest.fixture(scope="module")
def splits(built, sample_dir):
    """The sample's training and validation images at 32 px."""
    manifest = built[0]
    return {
        split: np.stack(
            [
                load_resized(sample_dir / p, 32)
                for p in manifest.loc[manifest["split"] == split, "path"]
            ]
        )
        for split in ("train", "val")
    }


def confident(n: int, p: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    probs = np.full((n, 8), (1 - p) / 7)
    probs[np.arange(n), y] = p
    probs += rng.uniform(0, 0.02, probs.shape)  # not all equal: quantiles mean something
    return probs / probs.sum(1, keepdims=True), y


def test_colour_stats_by_hand():
    grey = np.full((1, 4, 4, 3), 51, np.uint8)  # 0.2
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    stats = ood.colour_stats(np.concatenate([grey, red]))
    np.testing.assert_allclose(stats[0], [0.2, 0.2, 0.2, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(stats[1], [1, 0, 0, 0, 0, 0, 1], atol=1e-6)


def test_thresholds_flag_the_chosen_share_of_validation(splits):
    probs, y = confident(len(splits["val"]))
    det = ood.fit_detector(splits["train"], probs, y, splits["val"], false_flag_rate=0.1)
    out = det.flags(probs, splits["val"])
    n = len(y)
    assert (out["confidence"] < det.confidence_threshold).sum() <= np.ceil(0.1 * n)
    assert (out["colour_distance"] > det.colour_threshold).sum() <= np.ceil(0.1 * n)
    assert out["flagged"].mean() <= 0.2 + 1 / n


def test_greyscale_and_unsure_images_are_flagged(splits):
    probs, y = confident(len(splits["val"]))
    det = ood.fit_detector(splits["train"], probs, y, splits["val"], false_flag_rate=0.05)
    grey = np.repeat(splits["val"].mean(axis=3, keepdims=True), 3, axis=3).astype(np.uint8)
    out = det.flags(probs, grey)  # as confident as ever, but grey
    assert out["flagged"].all() and set(out["reason"]) == {"unusual colours"}
    unsure = np.full_like(probs, 1 / 8)
    out = det.flags(unsure, splits["val"])
    assert (out["confidence"] < det.confidence_threshold).all()
    assert all(r.startswith("low confidence") for r in out["reason"])


def test_detector_travels_as_json(splits):
    probs, y = confident(len(splits["val"]))
    det = ood.fit_detector(splits["train"], probs, y, splits["val"])
    again = ood.Detector.from_json(json.loads(json.dumps(det.to_json())))
    a, b = det.flags(probs, splits["val"]), again.flags(probs, splits["val"])
    np.testing.assert_allclose(a["colour_distance"], b["colour_distance"])
    np.testing.assert_array_equal(a["flagged"], b["flagged"])
    with pytest.raises(ValueError, match="false_flag_rate"):
        ood.fit_detector(splits["train"], probs, y, splits["val"], false_flag_rate=0.7)
