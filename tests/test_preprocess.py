"""Cleaning, splitting and caching on the real sample."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcells import preprocess
from bloodcells.paths import CLASSES
from tests.conftest import PRE


def test_non_image_is_reported_and_excluded(built):
    manifest, quality = built
    assert [r["path"] for r in quality["non_images"]] == ["neutrophil/.DS_169665.jpg"]
    assert "neutrophil/.DS_169665.jpg" not in set(manifest["path"])


def test_within_class_duplicate_keeps_one_copy(built):
    manifest, quality = built
    pair = {"basophil/BA_20201.jpg", "basophil/BA_809918.jpg"}
    groups = [g for g in quality["duplicate_groups"] if {g["kept"], *g["removed"]} == pair]
    assert len(groups) == 1
    assert len(pair & set(manifest["path"])) == 1
    assert manifest["sha256"].is_unique


def test_cross_class_duplicate_is_dropped_as_conflict(built):
    manifest, quality = built
    conflict = {"eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"}
    assert [set(c["paths"]) for c in quality["label_conflicts"]] == [conflict]
    assert quality["label_conflicts"][0]["classes"] == ["eosinophil", "neutrophil"]
    assert not conflict & set(manifest["path"])


def test_counts_reconcile(built, sample_dir):
    manifest, quality = built
    files = sum(1 for d in sample_dir.iterdir() for _ in d.iterdir())
    assert quality["files_scanned"] == files
    dropped = (
        len(quality["non_images"])
        + quality["duplicates_removed"]
        + quality["conflict_files_dropped"]
    )
    assert quality["images_kept"] == len(manifest) == files - dropped


def test_sizes_are_read_from_headers(built):
    manifest, _ = built
    sizes = set(zip(manifest["width"], manifest["height"], strict=True))
    assert (360, 363) in sizes and (366, 369) in sizes


def test_split_is_stratified_disjoint_and_complete(built):
    manifest, _ = built
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest["path"].is_unique  # each kept image in exactly one split
    for cls in CLASSES:
        rows = manifest[manifest["class"] == cls]
        n_test = (rows["split"] == "test").sum()
        # stratified: each class's test share is the requested 30% up to rounding
        assert abs(n_test - 0.3 * len(rows)) <= 1
        assert (rows["split"] == "val").sum() >= 1
    part = manifest[manifest["split"] != "test"]
    assert set(part["fold"]) == set(range(PRE["n_folds"]))
    assert (manifest.loc[manifest["split"] == "test", "fold"] == -1).all()


def test_split_is_byte_identical_for_a_seed(built, sample_dir, tmp_path):
    manifest, _ = built
    again, _ = preprocess.build_manifest(sample_dir, {**PRE, "workers": 1})
    a = preprocess.write_manifest(manifest, tmp_path / "a.csv")
    b = preprocess.write_manifest(again, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert a == b
    other = preprocess.assign_splits(manifest, 0.3, 0.2, 3, seed=7)
    assert (other["split"].to_numpy() != manifest["split"].to_numpy()).any()


def test_too_few_images_for_folds_is_a_clear_error(built):
    manifest, _ = built
    with pytest.raises(ValueError, match="n_folds=20"):
        preprocess.assign_splits(manifest, 0.3, 0.2, 20, seed=1)


def test_cached_arrays_match_manifest(built, sample_dir, tmp_path):
    manifest, _ = built
    meta = preprocess.cache_arrays(manifest, sample_dir, 32, tmp_path, workers=2)
    for split in preprocess.SPLITS:
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        x, y = preprocess.load_split(tmp_path, split)
        assert x.dtype == np.uint8 and x.shape == (len(rows), 32, 32, 3)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, rows["label"].to_numpy())
        assert [CLASSES[i] for i in y] == rows["class"].tolist()
        for i in (0, len(rows) - 1):  # order: row i is the image of manifest row i
            expected = preprocess.load_resized(sample_dir / rows.loc[i, "path"], 32)
            np.testing.assert_array_equal(x[i], expected)
    assert meta["counts"] == {s: int((manifest["split"] == s).sum()) for s in preprocess.SPLITS}
    assert not list(tmp_path.glob(".*_x.npy"))  # temporary files renamed into place


def test_load_split_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocess"):
        preprocess.load_split(tmp_path, "train")


def test_quality_table_lists_every_finding(built):
    _, quality = built
    table = preprocess.quality_table(quality)
    assert set(table["finding"]) >= {"non-image file", "byte-identical duplicate", "label conflict"}
