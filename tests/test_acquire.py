"""Acquisition: sources in order, checksums, atomic extraction, clear errors."""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from bloodcells import acquire
from bloodcells.acquire import AcquireError
from bloodcells.paths import project_root


def params_for(*sources: dict, complete: bool = False) -> dict:
    return {"data": {"sources": list(sources), "raw_dir": "data/raw", "expect_complete": complete}}


def make_tar(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:xz") as tf:
        tf.add(folder, arcname="PBC_dataset_normal_DIB")
    return dest


def file_count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_folder_source_is_copied_and_verified(sample_dir, tmp_path):
    dest = tmp_path / "raw" / "PBC_dataset_normal_DIB"
    out = acquire.acquire(params_for({"path": str(sample_dir)}), dest)
    assert out == dest
    assert file_count(dest) == file_count(sample_dir) + 1  # + the .verified stamp
    assert (dest / "neutrophil" / ".DS_169665.jpg").is_file()  # raw data kept as published
    assert not list(dest.parent.glob(".acquire-*"))


def test_second_run_is_idempotent(sample_dir, tmp_path, capsys):
    dest = tmp_path / "raw" / "PBC_dataset_normal_DIB"
    acquire.acquire(params_for({"path": str(sample_dir)}), dest)
    acquire.acquire(params_for({"path": "/nonexistent"}), dest)
    assert "already holds a verified copy" in capsys.readouterr().out


def test_tar_and_zip_archives(sample_dir, tmp_path):
    archive = make_tar(sample_dir, tmp_path / "pbc.tar.xz")
    digest = acquire.sha256_file(archive)
    dest = tmp_path / "a" / "PBC_dataset_normal_DIB"
    acquire.acquire(params_for({"path": str(archive), "sha256": digest}), dest)
    assert file_count(dest) == file_count(sample_dir) + 1
    # a zip wrapping the dataset's own zip, as Mendeley's "download all" does
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        for p in sample_dir.rglob("*"):
            if p.is_file():
                zf.write(p, f"PBC_dataset_normal_DIB/{p.relative_to(sample_dir)}")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "PBC_dataset_normal_DIB.zip")
    dest2 = tmp_path / "b" / "PBC_dataset_normal_DIB"
    acquire.acquire(params_for({"path": str(outer)}), dest2)
    assert file_count(dest2) == file_count(dest)


def test_checksum_mismatch_names_the_file(sample_copy, tmp_path):
    victim = (
        sample_copy / "monocyte" / sorted(p.name for p in (sample_copy / "monocyte").iterdir())[0]
    )
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    dest = tmp_path / "raw" / "PBC_dataset_normal_DIB"
    with pytest.raises(AcquireError, match=f"checksum mismatch for 'monocyte/{victim.name}'"):
        acquire.acquire(params_for({"path": str(sample_copy)}), dest)
    assert not dest.exists()
    assert not list(dest.parent.glob(".acquire-*"))


def test_unknown_file_is_rejected(sample_copy, tmp_path):
    (sample_copy / "platelet" / "extra.jpg").write_bytes(b"not from the dataset")
    with pytest.raises(AcquireError, match="'platelet/extra.jpg' is not in the PBC checksum"):
        acquire.acquire(params_for({"path": str(sample_copy)}), tmp_path / "r" / "x")


def test_truncated_archive_is_a_clear_error_and_leaves_nothing(sample_dir, tmp_path):
    archive = make_tar(sample_dir, tmp_path / "pbc.tar.xz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    dest = tmp_path / "raw" / "PBC_dataset_normal_DIB"
    with pytest.raises(AcquireError, match="truncated or corrupt"):
        acquire.acquire(params_for({"path": str(archive)}), dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial data, no temp folder


def test_archive_sha256_mismatch(sample_dir, tmp_path):
    archive = make_tar(sample_dir, tmp_path / "pbc.tar.xz")
    with pytest.raises(AcquireError, match="archive sha256"):
        acquire.acquire(
            params_for({"path": str(archive), "sha256": "0" * 64}), tmp_path / "r" / "x"
        )


def test_incomplete_copy_fails_when_complete_is_expected(sample_dir, tmp_path):
    with pytest.raises(AcquireError, match="files are missing"):
        acquire.acquire(params_for({"path": str(sample_dir)}, complete=True), tmp_path / "r" / "x")


def test_every_failed_source_is_listed_and_the_next_one_tried(sample_dir, tmp_path):
    bad = {"path": str(tmp_path / "missing.tar.xz")}
    offline = {"url": "http://127.0.0.1:9/pbc.zip"}  # nothing listens on the discard port
    with pytest.raises(AcquireError) as err:
        acquire.acquire(params_for(bad, offline), tmp_path / "r" / "x")
    text = str(err.value)
    assert "missing.tar.xz: does not exist" in text
    assert "127.0.0.1:9/pbc.zip: download failed" in text
    assert "PBC_DATA" in text
    dest = tmp_path / "ok" / "PBC_dataset_normal_DIB"
    assert acquire.acquire(params_for(bad, offline, {"path": str(sample_dir)}), dest) == dest


def test_download_of_a_url(sample_dir, tmp_path):
    archive = make_tar(sample_dir, tmp_path / "pbc.tar.xz")
    dest = tmp_path / "raw" / "PBC_dataset_normal_DIB"
    acquire.acquire(params_for({"url": archive.as_uri()}), dest)
    assert file_count(dest) == file_count(sample_dir) + 1


def test_env_var_source_comes_first(sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PBC_DATA", str(sample_dir))
    dest = tmp_path / "raw" / "PBC_dataset_normal_DIB"
    acquire.acquire(params_for({"path": "/nonexistent"}), dest)
    assert "PBC_DATA" not in (dest / ".verified").read_text()
    assert str(sample_dir) in (dest / ".verified").read_text()


def test_the_stamp_holds_the_source_as_written(sample_dir, tmp_path):
    """A source relative to the project stamps as written, not resolved: the verified copy,
    stamp included, hashes the same in every checkout of the project, wherever it lies."""
    relative = os.path.relpath(sample_dir, project_root())
    assert not Path(relative).is_absolute()
    dest = tmp_path / "raw" / "PBC_dataset_normal_DIB"
    acquire.acquire(params_for({"path": relative}), dest)
    n = file_count(sample_dir)
    assert (dest / ".verified").read_text() == f"{relative}\n{n} files verified\n"


def test_source_is_never_modified(sample_dir, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in sample_dir.rglob("*")}
    acquire.acquire(
        params_for({"path": str(sample_dir)}), tmp_path / "r" / "PBC_dataset_normal_DIB"
    )
    assert before == {p: p.stat().st_mtime_ns for p in sample_dir.rglob("*")}
