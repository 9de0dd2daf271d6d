"""Shared fixtures: the real PBC sample from ../shared/datasets/pbc-sample."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bloodcells import preprocess

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(
    os.environ.get("PBC_SAMPLE", ROOT.parent / "shared/datasets/pbc-sample/PBC_dataset_normal_DIB")
).resolve()
PRE = {
    "workers": 2,
    "test_size": 0.3,
    "val_size": 0.2,
    "n_folds": 3,
    "seed": 42,
    "near_duplicate_max_distance": 4,
    "image_sizes": [32],
}


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE.is_dir():
        pytest.fail(f"The PBC sample is missing at {SAMPLE}; set PBC_SAMPLE to its folder.")
    return SAMPLE


@pytest.fixture(scope="session")
def built(sample_dir) -> tuple[pd.DataFrame, dict]:
    """Manifest and quality record of the sample (computed once per session)."""
    return preprocess.build_manifest(sample_dir, PRE)


@pytest.fixture()
def sample_copy(sample_dir, tmp_path) -> Path:
    """A writable copy of the sample, laid out as the dataset folder."""
    dest = tmp_path / "src" / "PBC_dataset_normal_DIB"
    shutil.copytree(sample_dir, dest)
    return dest


def mini_project(root: Path, manifest: pd.DataFrame, sample_dir: Path, size: int = 32) -> Path:
    """Lay out a minimal project root: the sample's manifest and its arrays at ``size`` px."""
    preprocess.write_manifest(manifest, root / "data/interim/manifest.csv")
    preprocess.cache_arrays(manifest, sample_dir, size, root / f"data/processed/{size}", workers=2)
    return root
