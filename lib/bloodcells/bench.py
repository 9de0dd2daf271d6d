"""``python -m bloodcells.bench``: decode-and-resize throughput of the preprocessing.

Runs the stage's own function (:func:`bloodcells.preprocess.cache_arrays`) on every image
of the manifest at each size, into a temporary folder, and writes
``reports/bench_preprocess.json`` and ``.md`` with the machine described.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bloodcells.evaluate import hardware
from bloodcells.paths import manifest_path, project_root, raw_dataset_dir, reports_dir
from bloodcells.preprocess import cache_arrays, read_manifest


def bench_preprocess(sizes: list[int], workers: int = 0, root: Path | None = None) -> dict:
    root = root or project_root()
    manifest = read_manifest(manifest_path(root))
    results = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            meta = cache_arrays(manifest, raw_dataset_dir(root), size, Path(tmp), workers)
        results[str(size)] = {
            "images": meta["images"],
            "seconds": meta["seconds"],
            "images_per_second": meta["images_per_second"],
        }
    return {"machine": hardware(), "workers": workers or os.cpu_count(), "decode_resize": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    out = bench_preprocess(args.sizes, args.workers)
    reports = reports_dir()
    reports.mkdir(exist_ok=True)
    (reports / "bench_preprocess.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"Machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
        f"{out['workers']} worker processes.",
        "",
        "| size (px) | images | seconds | images/s |",
        "| --- | --- | --- | --- |",
    ]
    for size, r in out["decode_resize"].items():
        lines.append(f"| {size} | {r['images']} | {r['seconds']} | {r['images_per_second']} |")
    (reports / "bench_preprocess.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
