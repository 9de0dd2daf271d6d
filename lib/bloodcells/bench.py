"""``python -m bloodcells.bench`` (``make bench``): the study's speed and memory figures.

Measures, on this machine:

- decode-and-resize throughput of the preprocessing at each size, with the stage's own
  function (:func:`bloodcells.preprocess.cache_arrays`, all cores, into a temporary folder);
- training and inference images/s of every family at its size in the active profile:
  the family is built and compiled exactly as :func:`bloodcells.train.train_model` does,
  then trained with ``model.fit`` for ``--steps`` steps through the training input
  pipeline (augmentation on) and on in-memory batches, alternately, and timed over
  ``--infer`` validation images; with it, what the input pipeline costs a step (CPU and
  wall time) and the kernel's share of CPU time (:func:`pipeline_versus_memory`);

and collects, from the last ``dvc repro``, each stage's wall time and peak resident memory
(the ``stage`` entries of ``metrics/timings/*.json``) and each trained model's recorded
training time and throughput (``metrics/timings/train-*.json``). Writes
``reports/bench.json`` and ``reports/bench.md`` (``--out`` renames them) with the machine
named: CPU model, vector extensions, usable cores, oneDNN's ISA cap, and the commit
(``make bench-avx2`` measures capped to AVX2 and 2 cores, as the reference machine would).

``--side-by-side NATIVE CAPPED`` puts two such measurements in one table
(:func:`side_by_side`, ``reports/bench-side-by-side.md``): ``make bench-both`` measures
natively, then capped, then writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bloodcells.compare import FAMILY_ORDER
from bloodcells.config import load_params
from bloodcells.paths import manifest_path, project_root, raw_dataset_dir, reports_dir, resolve
from bloodcells.preprocess import cache_arrays, read_manifest
from bloodcells.timing import TIMINGS, describe_machine, git_output, hardware, read_timings

#: params.yaml model entries that are a family of their own (SupCon reuses one as encoder).
BENCH_KEYS = tuple(key for key in FAMILY_ORDER if key != "supcon")


def bench_preprocess(sizes: list[int], workers: int = 0, root: Path | None = None) -> dict:
    """Decode-and-resize images/s of the whole manifest at each size."""
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
    return results


def _cpu_seconds() -> tuple[float, float]:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def timed_fit(
    model, ds, steps: int, min_seconds: float | None = None, max_steps: int | None = None
) -> dict:
    """Wall seconds, CPU seconds and the kernel's share of CPU time for ``steps`` training
    steps of ``model.fit`` on ``ds``, in steady state: ``fit`` runs one step more and the
    clock starts when the first step ends, so a new iterator's start-up (which training pays
    once per run: its dataset holds every epoch and ``fit`` keeps one iterator) is left out
    and reported apart as ``startup``: the first step's seconds over a steady step's. The
    clock stops when the last step ends, so ``fit``'s own ending (its epoch's end and its
    iterator's teardown: about 1.4 s for the 96 px CNN on a 2-core AVX2 CPU, as long as
    one and a half of its steps) is left out too: training pays it once per run, not per
    step.

    With ``min_seconds``, timing goes on past ``steps`` until ``min_seconds`` have passed
    or ``max_steps`` steps are timed, whichever comes first; ``steps`` in the result is the
    number timed. A few fast steps overstate the rate: the pipeline's prefetched batches
    hide its cost at first (the 96 px CNN: about 60 images/s over 3 steps, 47 over 10 or
    20, on a 2-core AVX2 CPU)."""
    import keras

    last = max(steps, max_steps or steps) if min_seconds is not None else steps
    marks = {}

    class FirstAndLastStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                marks["cpu"], marks["t"] = _cpu_seconds(), time.perf_counter()
            elif batch >= steps:
                now = time.perf_counter()
                if batch == last or min_seconds is None or now - marks["t"] >= min_seconds:
                    marks["end_cpu"], marks["end"], marks["steps"] = _cpu_seconds(), now, batch
                    self.model.stop_training = True

    t0 = time.perf_counter()
    model.fit(
        ds,
        steps_per_epoch=last + 1,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[FirstAndLastStep()],
    )
    (u0, s0), (u1, s1) = marks["cpu"], marks["end_cpu"]
    seconds = marks["end"] - marks["t"]
    cpu = (u1 - u0) + (s1 - s0)
    return {
        "seconds": seconds,
        "steps": marks["steps"],
        "cpu": cpu,
        "kernel": (s1 - s0) / cpu if cpu else 0.0,
        "startup": (marks["t"] - t0) / (seconds / steps),
    }


def pipeline_versus_memory(model, pipeline, steps: int, warmup: int, rounds: int = 3) -> dict:
    """What the input pipeline costs a training step, measured two ways.

    - ``input_cpu_share``: CPU seconds the pipeline spends producing one batch (iterated
      alone) over the CPU seconds of one training step on in-memory batches. CPU time is
      what the pipeline takes from training on a 2-core machine, and unlike wall time it
      barely moves when the host is busy.
    - ``pipeline_overhead``: wall time per step through the pipeline over wall time per
      step on in-memory batches (the pipeline's own first ``steps`` batches replayed from a
      cache), minus 1, both in steady state (:func:`timed_fit`); the two alternate for
      ``rounds`` rounds and the fastest of each counts. ``pipeline_startup`` is the
      pipeline's first step in steady steps (a new iterator's cost, paid once a run). On
      a shared host single runs swing by 10-40% (measured here: the CNN at 62 and 113
      images/s minutes apart), so this figure is noisy; trust the CPU share.
    """
    in_memory = pipeline.take(steps).cache().repeat()
    for _ in in_memory.take(steps):  # fills the cache
        pass
    (u0, s0) = _cpu_seconds()
    for _ in pipeline.take(2 * steps):
        pass
    (u1, s1) = _cpu_seconds()
    input_cpu = ((u1 - u0) + (s1 - s0)) / (2 * steps)
    model.fit(in_memory, steps_per_epoch=warmup, epochs=1, shuffle=False, verbose=0)
    model.fit(pipeline, steps_per_epoch=warmup, epochs=1, shuffle=False, verbose=0)
    memory, piped = [], []
    for _ in range(rounds):
        memory.append(timed_fit(model, in_memory, steps))
        piped.append(timed_fit(model, pipeline, steps))
    step_cpu = min(m["cpu"] for m in memory) / steps
    return {
        "memory_seconds": min(m["seconds"] for m in memory) / steps,
        "pipeline_seconds": min(p["seconds"] for p in piped) / steps,
        "input_cpu_share": input_cpu / step_cpu if step_cpu else 0.0,
        "kernel_cpu_share": max(p["kernel"] for p in piped),
        "pipeline_startup": min(p["startup"] for p in piped),
        # each round's own ratio: how far apart single measurements fall on this host
        "round_overheads": [
            p["seconds"] / m["seconds"] - 1 for m, p in zip(memory, piped, strict=True)
        ],
    }


def bench_family(
    params: dict,
    key: str,
    root: Path | None = None,
    steps: int = 20,
    warmup: int = 3,
    infer: int = 512,
) -> dict:
    """Training and inference images/s of ``models.<key>`` at its configured size.

    Training is timed with ``model.fit`` through the training input pipeline
    (:func:`bloodcells.inputs.make_dataset`, augmentation on, as training runs) and on
    one in-memory batch repeated (no input work at all), alternately
    (:func:`pipeline_versus_memory`). Their ratio is what the pipeline costs; the
    kernel's share of CPU time is measured over the pipeline runs.
    """
    import numpy as np

    from bloodcells.experiment import load_splits
    from bloodcells.inference import predict_proba
    from bloodcells.inputs import make_dataset
    from bloodcells.train import (
        compiled_classifier,
        configure_tensorflow,
        distribution_strategy,
        family_config,
    )

    cfg = family_config(params, key, deterministic=False)
    data = load_splits(cfg.image_size, root)
    (x_tr, y_tr), (x_val, _) = data["train"], data["val"]
    configure_tensorflow(cfg)
    batch = cfg.batch_size * distribution_strategy().num_replicas_in_sync
    with distribution_strategy().scope():
        model = compiled_classifier(cfg, cfg.epochs * -(-len(x_tr) // batch))
    pipeline = make_dataset(
        x_tr, y_tr, batch, True, cfg.augment, cfg.seed, views=cfg.dihedral_views
    ).repeat()
    timed = pipeline_versus_memory(model, pipeline, steps, warmup)
    x_inf = np.asarray(x_val[: min(infer, len(x_val))])
    predict_proba(model, x_inf[:64])  # warm-up: trace the inference function
    _, infer_ips = predict_proba(model, x_inf)
    train_ips = batch / timed["pipeline_seconds"]
    return {
        "key": key,
        "family": cfg.family,
        "image_size": cfg.image_size,
        "batch_size": batch,
        "train_images_per_second": round(train_ips, 1),
        "in_memory_images_per_second": round(batch / timed["memory_seconds"], 1),
        "pipeline_overhead": round(timed["pipeline_seconds"] / timed["memory_seconds"] - 1, 3),
        "input_cpu_share": round(timed["input_cpu_share"], 4),
        "kernel_cpu_share": round(timed["kernel_cpu_share"], 3),
        "pipeline_startup_steps": round(timed["pipeline_startup"], 1),
        "pipeline_overhead_range": [
            round(min(timed["round_overheads"]), 3),
            round(max(timed["round_overheads"]), 3),
        ],
        "inference_images_per_second": round(infer_ips, 1),
        "parameter_count": int(model.count_params()),
        "epoch_minutes_estimate": round(len(x_tr) / train_ips / 60, 2),
    }


def stage_times(root: Path | None = None) -> dict:
    """Wall time and peak memory of each stage of the last ``dvc repro`` (stage runner)."""
    folder = resolve(TIMINGS, root)
    stages = [
        body["stage"]
        for body in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
        if "stage" in body
    ]
    stages.sort(key=lambda r: r.get("finished", ""))
    total = sum(r["seconds"] for r in stages)
    peak = max(stages, key=lambda r: r["peak_rss_mib"]) if stages else None
    return {
        "stages": stages,
        "total_seconds": round(total, 1),
        "largest_stage": peak["stage"] if peak else None,
        "peak_rss_mib": peak["peak_rss_mib"] if peak else None,
    }


def recorded_runs(root: Path | None = None) -> list[dict]:
    """Compute and validation result of every trained model, as its training stage
    recorded them (``models/*/*/run.json`` and ``metrics/timings/train-*.json``)."""
    rows = []
    for path in sorted(resolve("models", root).glob("*/*/run.json")):
        r = json.loads(path.read_text())
        t = read_timings(f"train-{r['key']}", root).get(r["variant"], {})
        rows.append(
            {
                "variant": r["variant"],
                "image_size": r["image_size"],
                "epochs": r["epochs"],
                "train_minutes": t.get("train_minutes"),
                "train_images_per_second": t.get("train_images_per_second"),
                "inference_images_per_second": t.get("inference_images_per_second"),
                "val_accuracy": r["val_accuracy"],
            }
        )
    return rows


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _range(r: dict) -> str:
    """The single rounds' wall overheads, lowest to highest (absent in older benches)."""
    low, high = r.get("pipeline_overhead_range") or (None, None)
    return "-" if low is None else f"rounds {100 * low:+.0f} to {100 * high:+.0f}%"


def markdown(out: dict) -> str:
    """The benchmark as markdown tables."""
    m = out["machine"]
    lines = [
        f"# Benchmarks ({out['date']}, commit {out.get('commit', '?')}, "
        f"profile `{out['profile']}`)",
        "",
        f"Machine: {describe_machine(m)}; {m['platform']}.",
    ]
    if out.get("decode_resize"):
        lines += ["", "## Preprocessing: decode + resize, all cores", ""]
        lines += ["| size (px) | images | seconds | images/s |", "| --- | --- | --- | --- |"]
        for size, r in out["decode_resize"].items():
            lines.append(
                f"| {size} | {r['images']:,} | {r['seconds']} | {_fmt(r['images_per_second'])} |"
            )
    if out.get("families"):
        lines += ["", f"## Families, timed now ({out['steps']} training steps each)", ""]
        lines += [
            "| model | size (px) | batch | train images/s | in-memory images/s | "
            "input CPU / step CPU | wall overhead | kernel CPU | est. min/epoch | "
            "inference images/s | parameters |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in out["families"]:
            lines.append(
                f"| {r['key']} | {r['image_size']} | {r['batch_size']} | "
                f"{_fmt(r['train_images_per_second'])} | {_fmt(r['in_memory_images_per_second'])} "
                f"| {100 * r['input_cpu_share']:.1f}% "
                f"| {100 * r['pipeline_overhead']:.1f}% ({_range(r)}) "
                f"| {100 * r['kernel_cpu_share']:.1f}% "
                f"| {_fmt(r['epoch_minutes_estimate'], 2)} "
                f"| {_fmt(r['inference_images_per_second'])} | {r['parameter_count']:,} |"
            )
        lines += [
            "",
            "Input CPU / step CPU: CPU seconds the input pipeline (augmentation on) spends on "
            "one batch, over the CPU seconds of one training step: what the pipeline takes "
            "from training. Wall overhead: seconds per step through the pipeline over seconds "
            "per step on in-memory batches, minus 1, in steady state: each timed `fit` starts "
            "its clock when its first step ends, since training creates its iterator once a "
            "run (best of 3 alternating rounds, each round's own ratio in brackets: on a shared "
            "host single rounds swing by tens of points, so trust the CPU share). Kernel CPU: "
            "system time over the process's CPU time while training through the pipeline.",
        ]
    if out.get("runs"):
        lines += ["", "## Trained models of the last `dvc repro` (as recorded)", ""]
        lines += [
            "| run | size (px) | epochs | train min | train images/s | inference images/s "
            "| val acc. |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in out["runs"]:
            lines.append(
                f"| {r['variant']} | {r['image_size']} | {r['epochs']} | "
                f"{_fmt(r['train_minutes'])} | {_fmt(r['train_images_per_second'])} | "
                f"{_fmt(r['inference_images_per_second'])} | {100 * r['val_accuracy']:.2f}% |"
            )
    st = out.get("stage_times") or {}
    if st.get("stages"):
        lines += ["", "## Stage wall times of the last `dvc repro`", ""]
        lines += ["| stage | wall time | peak memory (MiB) |", "| --- | --- | --- |"]
        for r in st["stages"]:
            lines.append(f"| {r['stage']} | {r['seconds'] / 60:.1f} min | {r['peak_rss_mib']:,} |")
        lines.append(
            f"| **all stages** | **{st['total_seconds'] / 60:.1f} min** | "
            f"largest: {st['largest_stage']}, {st['peak_rss_mib']:,} MiB |"
        )
    return "\n".join(lines) + "\n"


def code_version(root: Path) -> str:
    """The commit a measurement ran (short hash, ``+changes`` when the tree differs)."""
    here = ["-C", str(root)]
    commit = git_output(*here, "rev-parse", "--short", "HEAD")
    dirty = git_output(*here, "status", "--porcelain", "--untracked-files=no")
    return commit + ("+changes" if dirty and commit != "unknown" else "")


def run_bench(
    params: dict,
    sizes: list[int],
    keys: list[str],
    steps: int = 20,
    workers: int = 0,
    root: Path | None = None,
    name: str = "bench",
) -> dict:
    """Measure and collect everything; write ``reports/<name>.{json,md}``; return it."""
    root = root or project_root()
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": code_version(root),
        "profile": params.get("profile"),
        "machine": hardware(),
        "workers": workers or os.cpu_count(),
        "steps": steps,
        "decode_resize": bench_preprocess(sizes, workers, root) if sizes else {},
        "families": [bench_family(params, key, root, steps) for key in keys],
        "runs": recorded_runs(root),
        "stage_times": stage_times(root),
    }
    reports = reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    (reports / f"{name}.md").write_text(markdown(out), encoding="utf-8")
    return out


def _pair(native, capped, digits: int = 1, percent: bool = False) -> str:
    def one(v):
        if v is None:
            return "-"
        return f"{100 * v:.{digits}f}%" if percent else _fmt(float(v), digits)

    return f"{one(native)} / {one(capped)}"


def side_by_side(native: dict, capped: dict) -> str:
    """Two benchmarks of the same profile (:func:`run_bench` outputs), natively and capped
    to the reference machine, as one markdown table: each figure ``native / capped``, with
    the capped run's slowdown. Rows are what both measured."""
    for what in ("profile", "commit"):
        if native.get(what) != capped.get(what):
            raise ValueError(
                f"The two benchmarks differ in {what}: {native.get(what)!r} natively, "
                f"{capped.get(what)!r} capped. Measure both from the same tree and profile "
                "(make bench-both)."
            )
    lines = [
        f"# Benchmarks natively and capped (commit {native.get('commit', '?')}, "
        f"profile `{native['profile']}`)",
        "",
        f"- Native ({native['date']}): {describe_machine(native['machine'])}.",
        f"- Capped ({capped['date']}): {describe_machine(capped['machine'])}.",
        f"- {native['steps']} / {capped['steps']} timed training steps per family.",
    ]
    sizes = [s for s in native.get("decode_resize", {}) if s in capped.get("decode_resize", {})]
    if sizes:
        lines += ["", "## Decode + resize, images/s (native / capped)", ""]
        lines += ["| size (px) | images/s | capped slowdown |", "| --- | --- | --- |"]
        for size in sizes:
            a = native["decode_resize"][size]["images_per_second"]
            b = capped["decode_resize"][size]["images_per_second"]
            lines.append(f"| {size} | {_pair(a, b)} | {a / b:.2f}x |")
        lines += [
            "",
            "Decoding and resizing (Pillow, all usable cores) does not use oneDNN: of the cap "
            "only the cores count (`taskset`), and beyond them the two figures differ by the "
            "disk cache (the first run may read the files cold) and the host's noise.",
        ]
    theirs = {r["key"]: r for r in capped.get("families", [])}
    rows = [(r, theirs[r["key"]]) for r in native.get("families", []) if r["key"] in theirs]
    if rows:
        lines += ["", "## Families (native / capped)", ""]
        lines += [
            "| model | size (px) | train images/s | capped slowdown | in-memory images/s | "
            "input CPU / step CPU | wall overhead | kernel CPU | inference images/s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for a, b in rows:
            fig = {k: (a[k], b[k]) for k in a if k in b}
            slow = a["train_images_per_second"] / b["train_images_per_second"]
            lines.append(
                f"| {a['key']} | {a['image_size']} | {_pair(*fig['train_images_per_second'])} "
                f"| {slow:.2f}x | {_pair(*fig['in_memory_images_per_second'])} "
                f"| {_pair(*fig['input_cpu_share'], percent=True)} "
                f"| {_pair(*fig['pipeline_overhead'], percent=True)} "
                f"| {_pair(*fig['kernel_cpu_share'], percent=True)} "
                f"| {_pair(*fig['inference_images_per_second'])} |"
            )
        lines += [
            "",
            "Capped slowdown: native training images/s over capped. The two runs are one "
            "after the other, not interleaved: on a shared host, noise moves either side.",
        ]
    return "\n".join(lines) + "\n"


def write_side_by_side(native_file: Path, capped_file: Path, root: Path | None = None) -> Path:
    """:func:`side_by_side` of two ``reports/<name>.json`` files, to
    ``reports/bench-side-by-side.md``; a missing or unreadable file is named."""
    loaded = []
    for path in (Path(native_file), Path(capped_file)):
        try:
            loaded.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(
                f"bench --side-by-side: cannot read {path} ({err}); run `make bench-both`, "
                "or `make bench ARGS='--out NAME'` natively and capped first."
            ) from err
    target = reports_dir(root or project_root()) / "bench-side-by-side.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(side_by_side(*loaded), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 224])
    parser.add_argument("--families", nargs="*", default=list(BENCH_KEYS))
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per family")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--profile", help="override params.yaml's profile")
    parser.add_argument("--out", default="bench", help="report name: reports/OUT.{json,md}")
    parser.add_argument(
        "--side-by-side",
        nargs=2,
        metavar=("NATIVE", "CAPPED"),
        help="measure nothing: put two bench JSON files in one table",
    )
    args = parser.parse_args(argv)
    if not args.out or "/" in args.out or args.out.startswith("."):
        parser.error(f"--out {args.out!r}: give a plain name; the report is reports/NAME.md")
    if args.side_by_side:
        target = write_side_by_side(*args.side_by_side)
        print(target.read_text(encoding="utf-8"))
        return 0
    params = load_params(profile=args.profile)
    unknown = sorted(set(args.families) - set(BENCH_KEYS))
    if unknown:
        parser.error(f"unknown --families {unknown}; choose from {', '.join(BENCH_KEYS)}")
    out = run_bench(params, args.sizes, args.families, args.steps, args.workers, name=args.out)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
