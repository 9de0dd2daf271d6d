"""Scan, clean and split the raw dataset; cache resized uint8 arrays per split.

Steps, in the order the ``preprocess`` stage runs them:

1. :func:`scan` reads every file once: sha256, header size and mode, a full decode (at a
   reduced DCT scale, which still walks every coded block, so truncation is caught) and a
   perceptual hash. Files that do not decode are recorded, never trained on.
2. :func:`deduplicate` keeps one file of each byte-identical group within a class and drops
   every file of a group whose copies carry different labels (a label conflict).
3. :func:`find_near_duplicates` reports pairs of kept images whose perceptual hashes differ
   in at most a few bits.
4. :func:`assign_splits` makes the stratified train/val/test split and the CV folds.
5. :func:`cache_arrays` decodes each kept image straight to the target size with Pillow's
   JPEG draft mode and writes one uint8 array per split, in manifest order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import StratifiedKFold, train_test_split

from bloodcells.paths import CLASSES
from bloodcells.timing import record_timing

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "class", "label", "sha256", "width", "height", "split", "fold"]
# Pillow refuses images above this many pixels (decompression bombs); PBC images are ~0.13 MP.
Image.MAX_IMAGE_PIXELS = 50_000_000


def _workers(workers: int) -> int:
    return workers or os.cpu_count() or 1


def _scan_one(args: tuple[str, str]) -> dict:
    root, rel = args
    data = (Path(root) / rel).read_bytes()
    row = {
        "path": rel,
        "class": rel.split("/", 1)[0],
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "width": 0,
        "height": 0,
        "mode": "",
        "format": "",
        "phash": "",
        "error": "",
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                row.update(width=im.width, height=im.height, mode=im.mode, format=im.format)
                im.draft("RGB", (64, 64))
                im.load()
                row["phash"] = str(imagehash.phash(im.convert("L")))
    except UnidentifiedImageError:
        row["error"] = "not an image Pillow can identify"
    except (OSError, SyntaxError, ValueError, Warning) as exc:
        row["error"] = f"undecodable: {type(exc).__name__}: {exc}"
    return row


def list_files(raw_dir: Path) -> list[str]:
    """Every regular file in a class folder, as ``<class>/<file>``, sorted."""
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir} does not exist: run the 'data' stage first.")
    found = sorted(
        f"{d.name}/{f.name}"
        for d in raw_dir.iterdir()
        if d.is_dir()
        for f in d.iterdir()
        if f.is_file() and not f.name.startswith(".verified")
    )
    unknown = sorted({p.split("/")[0] for p in found} - set(CLASSES))
    if unknown:
        raise ValueError(
            f"{raw_dir} has class folders {unknown} that are not PBC classes {list(CLASSES)}."
        )
    return found


def scan(raw_dir: Path, workers: int = 0) -> pd.DataFrame:
    """One row per file: identity, size, decodability and perceptual hash."""
    files = list_files(raw_dir)
    jobs = [(str(raw_dir), rel) for rel in files]
    with ProcessPoolExecutor(_workers(workers)) as pool:
        rows = list(pool.map(_scan_one, jobs, chunksize=64))
    return pd.DataFrame(rows)


def deduplicate(scanned: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Drop non-images and byte-identical duplicates; return kept rows and what was dropped."""
    bad = scanned[scanned["error"] != ""]
    images = scanned[scanned["error"] == ""].sort_values("path")
    duplicates, conflicts, drop = [], [], set()
    for digest, group in images.groupby("sha256", sort=True):
        if len(group) < 2:
            continue
        paths = group["path"].tolist()
        classes = sorted(set(group["class"]))
        if len(classes) > 1:
            conflicts.append({"sha256": digest, "paths": paths, "classes": classes})
            drop.update(paths)
        else:
            duplicates.append({"sha256": digest, "kept": paths[0], "removed": paths[1:]})
            drop.update(paths[1:])
    kept = images[~images["path"].isin(drop)].reset_index(drop=True)
    record = {
        "files_scanned": len(scanned),
        "non_images": [{"path": r.path, "error": r.error} for r in bad.itertuples()],
        "duplicate_groups": duplicates,
        "duplicates_removed": sum(len(d["removed"]) for d in duplicates),
        "label_conflicts": conflicts,
        "conflict_files_dropped": sum(len(c["paths"]) for c in conflicts),
        "images_kept": len(kept),
    }
    return kept, record


def find_near_duplicates(kept: pd.DataFrame, max_distance: int) -> list[dict]:
    """Pairs of kept images whose 64-bit perceptual hashes differ in <= max_distance bits."""
    hashes = np.array([int(h, 16) for h in kept["phash"]], dtype=np.uint64)
    paths = kept["path"].to_numpy()
    classes = kept["class"].to_numpy()
    pairs = []
    for i in range(len(hashes) - 1):
        dist = np.bitwise_count(hashes[i + 1 :] ^ hashes[i])
        for j in np.flatnonzero(dist <= max_distance):
            k = i + 1 + int(j)
            pairs.append(
                {
                    "a": paths[i],
                    "b": paths[k],
                    "distance": int(dist[j]),
                    "same_class": bool(classes[i] == classes[k]),
                }
            )
    return sorted(pairs, key=lambda p: (p["distance"], p["a"], p["b"]))


def assign_splits(
    kept: pd.DataFrame, test_size: float, val_size: float, n_folds: int, seed: int
) -> pd.DataFrame:
    """Stratified train/val/test split plus stratified CV folds of the training part.

    Deterministic for a seed: rows are sorted by path before splitting. ``fold`` is the CV
    fold (0..n_folds-1) of every train or val row, -1 for test rows.
    """
    df = kept.sort_values("path").reset_index(drop=True)
    counts = df["class"].value_counts()
    if counts.min() < n_folds + 2:
        raise ValueError(
            f"Class '{counts.idxmin()}' has {counts.min()} images, too few for a stratified "
            f"split with preprocess.n_folds={n_folds}; lower n_folds or add data."
        )
    idx = np.arange(len(df))
    labels = df["class"].to_numpy()
    train_part, test = train_test_split(
        idx, test_size=test_size, stratify=labels, random_state=seed
    )
    train, val = train_test_split(
        train_part, test_size=val_size, stratify=labels[train_part], random_state=seed
    )
    split = np.empty(len(df), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    fold = np.full(len(df), -1, dtype=int)
    part = np.sort(train_part)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(skf.split(part, labels[part])):
        fold[part[held]] = k
    df["split"], df["fold"] = split, fold
    df["label"] = df["class"].map({c: i for i, c in enumerate(CLASSES)}).astype(int)
    return df


def write_manifest(manifest: pd.DataFrame, path: Path) -> str:
    """Write the manifest CSV atomically; return its sha256 (the data hash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    manifest[MANIFEST_COLUMNS].to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the 'preprocess' stage first.")
    df = pd.read_csv(path)
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}: rerun the 'preprocess' stage.")
    return df


def manifest_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_manifest(raw_dir: Path, pre: dict) -> tuple[pd.DataFrame, dict]:
    """Scan, deduplicate, find near-duplicates and split; return (manifest, quality record)."""
    scanned = scan(raw_dir, pre["workers"])
    kept, quality = deduplicate(scanned)
    manifest = assign_splits(kept, pre["test_size"], pre["val_size"], pre["n_folds"], pre["seed"])
    near = find_near_duplicates(manifest, pre["near_duplicate_max_distance"])
    split_of = dict(zip(manifest["path"], manifest["split"], strict=True))
    quality["near_duplicates"] = near
    quality["near_duplicate_pairs"] = len(near)
    quality["near_duplicate_pairs_across_splits"] = sum(
        split_of[p["a"]] != split_of[p["b"]] for p in near
    )
    quality["near_duplicate_max_distance"] = pre["near_duplicate_max_distance"]
    quality["image_sizes"] = (
        scanned[scanned["error"] == ""]
        .groupby(["width", "height"])
        .size()
        .sort_values(ascending=False)
        .reset_index(name="count")
        .to_dict("records")
    )
    quality["split_counts"] = (
        manifest.groupby(["split", "class"]).size().unstack(fill_value=0).to_dict("index")
    )
    return manifest, quality


def write_quality(quality: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(quality, indent=2, default=int) + "\n")


def load_resized(path: str | Path, size: int) -> np.ndarray:
    """Decode one image to a ``size`` x ``size`` RGB uint8 array.

    Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT domain (never below
    the target size), so small targets cost a fraction of a full decode.
    """
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(im, dtype=np.uint8)


def _load_job(args: tuple[str, int]) -> np.ndarray:
    return load_resized(*args)


def cache_arrays(
    manifest: pd.DataFrame, raw_dir: Path, size: int, out_dir: Path, workers: int = 0
) -> dict:
    """Write ``{split}_x.npy`` (uint8, N x size x size x 3) and ``{split}_y.npy`` per split.

    Rows follow manifest order within each split. Arrays are filled through a memory map,
    so memory stays at a few chunks whatever the dataset size. Returns timing facts.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_total = 0
    with ProcessPoolExecutor(_workers(workers)) as pool:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            jobs = [(str(raw_dir / p), size) for p in rows["path"]]
            tmp_x = out_dir / f".{split}_x.npy"
            x = open_memmap(tmp_x, mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3))
            for i, arr in enumerate(pool.map(_load_job, jobs, chunksize=32)):
                x[i] = arr
            x.flush()
            del x
            tmp_x.replace(out_dir / f"{split}_x.npy")
            np.save(out_dir / f"{split}_y.npy", rows["label"].to_numpy(dtype=np.int64))
            n_total += len(rows)
    seconds = time.perf_counter() - t0
    meta = {
        "size": size,
        "classes": list(CLASSES),
        "counts": {s: int((manifest["split"] == s).sum()) for s in SPLITS},
        "images": n_total,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {
        **meta,
        "seconds": round(seconds, 3),
        "images_per_second": round(n_total / seconds, 1) if seconds else None,
    }


def load_split(processed: Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 NHWC, labels int64) of a cached split; images memory-mapped."""
    x_path = processed / f"{split}_x.npy"
    if not x_path.is_file():
        raise FileNotFoundError(f"{x_path} does not exist: run the 'preprocess' stage first.")
    x = np.load(x_path, mmap_mode="r" if mmap else None)
    y = np.load(processed / f"{split}_y.npy")
    return x, y


def class_counts(manifest: pd.DataFrame, by: Iterable[str] = ("split",)) -> pd.DataFrame:
    """Images per class (rows) and per ``by`` column value (columns), with totals."""
    table = manifest.pivot_table(
        index="class", columns=list(by), values="path", aggfunc="count", fill_value=0
    )
    table["total"] = table.sum(axis=1)
    return table.reindex(list(CLASSES))


def quality_table(quality: dict) -> pd.DataFrame:
    """The data-quality record as one row per finding."""
    rows = [
        {
            "finding": "non-image file",
            "file(s)": r["path"],
            "action": "excluded",
            "detail": r["error"],
        }
        for r in quality["non_images"]
    ]
    rows += [
        {
            "finding": "byte-identical duplicate",
            "file(s)": ", ".join([g["kept"], *g["removed"]]),
            "action": f"kept {g['kept']}",
            "detail": f"sha256 {g['sha256'][:12]}",
        }
        for g in quality["duplicate_groups"]
    ]
    rows += [
        {
            "finding": "label conflict",
            "file(s)": ", ".join(c["paths"]),
            "action": "all copies dropped",
            "detail": " vs ".join(c["classes"]),
        }
        for c in quality["label_conflicts"]
    ]
    rows += [
        {
            "finding": "near-duplicate (perceptual hash)",
            "file(s)": f"{p['a']}, {p['b']}",
            "action": "reported, kept",
            "detail": f"{p['distance']} bits apart"
            + ("" if p["same_class"] else ", different classes"),
        }
        for p in quality["near_duplicates"]
    ]
    return pd.DataFrame(rows, columns=["finding", "file(s)", "action", "detail"])


def run_preprocess(params: dict, root: Path) -> dict:
    """The whole ``preprocess`` stage: manifest, quality record, cached arrays, metrics.

    Returns a summary with the counts (written to ``metrics/preprocess.json``) and the
    per-size decode throughput (to ``metrics/timings/01_preprocessing.json``).
    """
    from bloodcells.paths import manifest_path, processed_dir, quality_path, raw_dataset_dir

    pre = params["preprocess"]
    raw_dir = raw_dataset_dir(root)
    t0 = time.perf_counter()
    manifest, quality = build_manifest(raw_dir, pre)
    scan_seconds = time.perf_counter() - t0
    data_hash = write_manifest(manifest, manifest_path(root))
    quality["manifest_sha256"] = data_hash
    write_quality(quality, quality_path(root))
    throughput = {}
    for size in sorted(set(pre["image_sizes"])):
        made = cache_arrays(manifest, raw_dir, size, processed_dir(size, root), pre["workers"])
        meta = {k: v for k, v in made.items() if k not in ("seconds", "images_per_second")}
        meta["manifest_sha256"] = data_hash
        (processed_dir(size, root) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        throughput[str(size)] = made["images_per_second"]
    summary = {
        "files_scanned": quality["files_scanned"],
        "images_kept": quality["images_kept"],
        "non_images_excluded": len(quality["non_images"]),
        "duplicates_removed": quality["duplicates_removed"],
        "conflict_files_dropped": quality["conflict_files_dropped"],
        "near_duplicate_pairs": quality["near_duplicate_pairs"],
        "split_sizes": {s: int((manifest["split"] == s).sum()) for s in SPLITS},
        "manifest_sha256": data_hash,
    }
    timings = {
        "scan_seconds": round(scan_seconds, 2),
        "decode_resize_images_per_second": throughput,
    }
    record_timing("01_preprocessing", "decode", timings, root)
    metrics = root / "metrics" / "preprocess.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, **timings}
