"""Stage ``data``: find the PBC dataset, verify it byte for byte, and lay it out atomically.

Sources from ``params.yaml`` (``data.sources``) are tried in order; ``PBC_DATA`` in the
environment puts a user's own copy (archive or folder) first. A source is a local
``.tar.xz``/``.tar``/``.zip`` archive, an extracted folder, or a URL to download. Every file
is checked against the project's checksum manifest (``resources/pbc_sha256sums.txt``, the
dataset's published per-file sha256); an archive is also checked against its own sha256
where one is given. Files are written into a temporary folder that is renamed into place
only when everything verified, so a failed run leaves nothing half-written. The source is
only ever read.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm.auto import tqdm

from bloodcells.config import load_params
from bloodcells.paths import DATASET_DIRNAME, project_root, resolve
from bloodcells.timing import record_stage_time

CHUNK = 1 << 20
ENV_VAR = "PBC_DATA"
STAMP = ".verified"


class AcquireError(RuntimeError):
    """No source could provide a verified copy of the dataset."""


class SourceError(RuntimeError):
    """One source failed; the message says why."""


def load_checksums() -> dict[str, str]:
    """Map ``<class>/<file>`` to its published sha256."""
    text = resources.files("bloodcells").joinpath("resources/pbc_sha256sums.txt").read_text()
    out = {}
    for line in text.splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest:
            out[str(PurePosixPath(name).relative_to(DATASET_DIRNAME))] = digest
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Verifier:
    """Checks each file against the manifest as it is written."""

    checksums: dict[str, str]
    expect_complete: bool
    seen: set[str] = field(default_factory=set)

    def check(self, rel: str, digest: str, origin: str) -> None:
        expected = self.checksums.get(rel)
        if expected is None:
            raise SourceError(
                f"{origin}: file '{rel}' is not in the PBC checksum manifest; "
                "this is not the published dataset (remove the file or use the original copy)."
            )
        if digest != expected:
            raise SourceError(
                f"{origin}: checksum mismatch for '{rel}' (sha256 {digest[:12]}..., "
                f"expected {expected[:12]}...); the copy is damaged or altered."
            )
        self.seen.add(rel)

    def finish(self, origin: str) -> None:
        if not self.seen:
            raise SourceError(f"{origin}: no dataset files found under '{DATASET_DIRNAME}/'.")
        missing = sorted(set(self.checksums) - self.seen)
        if self.expect_complete and missing:
            raise SourceError(
                f"{origin}: {len(missing)} of {len(self.checksums)} files are missing "
                f"(first: {', '.join(missing[:3])}); the copy is incomplete."
            )


def _dataset_relpath(name: str) -> str | None:
    """``.../PBC_dataset_normal_DIB/<class>/<file>`` -> ``<class>/<file>``; None otherwise."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts or not parts or parts[0] == "/":
        return None
    if DATASET_DIRNAME not in parts:
        return None
    rest = parts[parts.index(DATASET_DIRNAME) + 1 :]
    if len(rest) != 2 or rest[0].startswith("__MACOSX"):
        return None
    return "/".join(rest)


def _copy_stream(src: BinaryIO, dest: Path) -> str:
    h = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _members_tar(path: Path) -> Iterator[tuple[str, BinaryIO]]:
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            rel = _dataset_relpath(member.name)
            if rel is None or not member.isfile():
                continue
            fh = tf.extractfile(member)
            if fh is not None:
                yield rel, fh


def _members_zip(zf: zipfile.ZipFile) -> Iterator[tuple[str, BinaryIO]]:
    for info in zf.infolist():
        if info.is_dir():
            continue
        if info.filename.lower().endswith(".zip"):
            # Mendeley's "download all" wraps the dataset's own zip in another one.
            with zf.open(info) as inner_fh, zipfile.ZipFile(inner_fh) as inner:
                yield from _members_zip(inner)
            continue
        rel = _dataset_relpath(info.filename)
        if rel is not None:
            with zf.open(info) as fh:
                yield rel, fh


def _members_folder(path: Path) -> Iterator[tuple[str, BinaryIO]]:
    base = path if path.name == DATASET_DIRNAME else path / DATASET_DIRNAME
    if not base.is_dir():
        raise SourceError(f"{path}: no '{DATASET_DIRNAME}' folder inside it.")
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
            with open(file, "rb") as fh:
                yield f"{class_dir.name}/{file.name}", fh


def _members(path: Path) -> Iterator[tuple[str, BinaryIO]]:
    if path.is_dir():
        yield from _members_folder(path)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            yield from _members_zip(zf)
    else:
        yield from _members_tar(path)


def _download(url: str, dest_dir: Path) -> Path:
    dest = dest_dir / "download.bin"
    part = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc="download", mininterval=2
            ) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:  # URLError, timeouts and HTTP errors are all OSErrors
        raise SourceError(f"{url}: download failed ({exc}).") from exc
    part.rename(dest)
    return dest


def _extract(path: Path, tmp: Path, verifier: Verifier, origin: str) -> None:
    total = len(verifier.checksums) if verifier.expect_complete else None
    try:
        with tqdm(total=total, unit="file", desc=f"extract {path.name}", mininterval=2) as bar:
            for rel, fh in _members(path):
                digest = _copy_stream(fh, tmp / rel)
                verifier.check(rel, digest, origin)
                bar.update(1)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise SourceError(f"{origin}: the archive is truncated or corrupt ({exc}).") from exc
    verifier.finish(origin)


def acquire_from(source: dict, dest: Path, checksums: dict, expect_complete: bool) -> Path:
    """Fetch one source into ``dest`` (atomically); raise SourceError if it fails."""
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".acquire-") as work:
        work_dir = Path(work)
        if "url" in source:
            origin = stamped = source["url"]
            path = _download(origin, work_dir)
        else:
            path = resolve(source["path"])
            origin = str(path)
            # as written: a path relative to the project stamps the same in every checkout,
            # so the copy's DVC hash does not depend on where the project was cloned
            stamped = str(source["path"])
            if not path.exists():
                raise SourceError(f"{origin}: does not exist.")
        expected = source.get("sha256")
        if expected and path.is_file():
            digest = sha256_file(path)
            if digest != expected:
                raise SourceError(
                    f"{origin}: archive sha256 is {digest[:12]}..., expected {expected[:12]}... "
                    "(the archive is damaged, truncated or a different file)."
                )
        tmp = work_dir / DATASET_DIRNAME
        tmp.mkdir()
        verifier = Verifier(checksums, expect_complete)
        _extract(path, tmp, verifier, origin)
        (tmp / STAMP).write_text(f"{stamped}\n{len(verifier.seen)} files verified\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    return dest


def _is_complete(dest: Path, checksums: dict, expect_complete: bool) -> bool:
    """True when ``dest`` is an earlier verified copy that still matches the manifest."""
    if not (dest / STAMP).is_file():
        return False
    files = {
        f"{p.parent.name}/{p.name}": p for p in dest.glob("*/*") if p.is_file() and p.name != STAMP
    }
    if expect_complete and set(files) != set(checksums):
        return False
    return bool(files) and all(checksums.get(r) == sha256_file(p) for r, p in files.items())


def sources_from(params: dict) -> list[dict]:
    sources = list(params["data"]["sources"])
    if os.environ.get(ENV_VAR):
        sources.insert(0, {"path": os.environ[ENV_VAR]})
    return sources


def acquire(params: dict, dest: Path | None = None) -> Path:
    """Provide a verified copy of the dataset at ``data/raw/PBC_dataset_normal_DIB``.

    Idempotent: a verified copy already in place is re-checked and kept.
    """
    dest = dest or resolve(Path(params["data"]["raw_dir"]) / DATASET_DIRNAME)
    checksums = load_checksums()
    expect_complete = bool(params["data"]["expect_complete"])
    if _is_complete(dest, checksums, expect_complete):
        print(f"{dest} already holds a verified copy; nothing to do.")
        return dest
    failures = []
    for source in sources_from(params):
        try:
            out = acquire_from(source, dest, checksums, expect_complete)
        except SourceError as exc:
            failures.append(str(exc))
            print(f"source failed: {exc}", file=sys.stderr)
            continue
        print(f"verified copy of the dataset at {out}")
        return out
    listing = "\n".join(f"  - {f}" for f in failures)
    raise AcquireError(
        "No source provided a verified PBC dataset. Tried, in order:\n"
        f"{listing}\n"
        f"Point {ENV_VAR} at your copy (the .tar.xz or .zip archive, or the extracted "
        "folder), or add it to data.sources in params.yaml."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="override params.yaml's profile")
    args = parser.parse_args(argv)
    os.chdir(project_root())
    t0 = time.perf_counter()
    try:
        acquire(load_params(profile=args.profile))
    except AcquireError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record_stage_time("data", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
