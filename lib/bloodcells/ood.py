"""Saying when an input is unlike the training data (issue 18, part 4).

Two scores per image, each with a threshold chosen on the validation split:

* **confidence**: the maximum class probability after temperature scaling (the temperature
  fitted on validation, :func:`bloodcells.calibration.fit_temperature`). Low confidence
  means the model cannot place the image among its classes.
* **colour distance**: the Mahalanobis distance of simple image statistics (mean and spread
  of each RGB channel, and the mean saturation) from those of the training images. A
  greyscale TIFF, another stain or a bright-field image of something else is far away even
  when the model is confidently wrong about it.

An image is flagged when either score is past its threshold. The thresholds are quantiles
of the validation images' scores (``false_flag_rate`` of in-distribution images flagged by
each), so their cost on in-domain data is known before any shift is seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bloodcells.calibration import apply_temperature, fit_temperature


def colour_stats(x: np.ndarray) -> np.ndarray:
    """Per image: mean and standard deviation of R, G and B, and mean saturation (0-1)."""
    f = np.asarray(x, dtype=np.float32).reshape(len(x), -1, 3) / 255.0
    hi, lo = f.max(axis=2), f.min(axis=2)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    return np.concatenate(
        [f.mean(axis=1), f.std(axis=1), saturation.mean(axis=1, keepdims=True)], axis=1
    )


@dataclass
class Detector:
    """What flags an image; JSON-ready (it travels in an exported model's metadata)."""

    temperature: float
    confidence_threshold: float
    colour_mean: list[float]
    colour_inverse_covariance: list[list[float]]
    colour_threshold: float
    false_flag_rate: float

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(np.asarray(probs, float), self.temperature).max(axis=1)

    def colour_distance(self, x: np.ndarray) -> np.ndarray:
        d = colour_stats(x) - np.asarray(self.colour_mean)
        icov = np.asarray(self.colour_inverse_covariance)
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, icov, d), 0.0))

    def flags(self, probs: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: confidence, colour distance, whether flagged, and why."""
        conf, dist = self.confidence(probs), self.colour_distance(x)
        low, far = conf < self.confidence_threshold, dist > self.colour_threshold
        reason = np.where(
            low & far, "low confidence, unusual colours",
            np.where(low, "low confidence", np.where(far, "unusual colours", "")),
        )  # fmt: skip
        return {"confidence": conf, "colour_distance": dist, "flagged": low | far, "reason": reason}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Detector:
        return cls(**data)


def fit_detector(
    x_train: np.ndarray,
    val_probs: np.ndarray,
    y_val: np.ndarray,
    x_val: np.ndarray,
    false_flag_rate: float = 0.01,
) -> Detector:
    """A detector whose thresholds flag ``false_flag_rate`` of the validation images by
    each score; the colour model comes from the training images."""
    if not 0 < false_flag_rate < 0.5:
        raise ValueError(f"false_flag_rate must be in (0, 0.5); got {false_flag_rate!r}.")
    stats = colour_stats(x_train)
    cov = np.cov(stats, rowvar=False) + 1e-6 * np.eye(stats.shape[1])
    detector = Detector(
        temperature=fit_temperature(val_probs, y_val),
        confidence_threshold=0.0,
        colour_mean=stats.mean(axis=0).tolist(),
        colour_inverse_covariance=np.linalg.inv(cov).tolist(),
        colour_threshold=np.inf,
        false_flag_rate=false_flag_rate,
    )
    detector.confidence_threshold = float(
        np.quantile(detector.confidence(val_probs), false_flag_rate)
    )
    detector.colour_threshold = float(
        np.quantile(detector.colour_distance(x_val), 1 - false_flag_rate)
    )
    return detector
