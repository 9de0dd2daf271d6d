"""Wall-clock figures and the machine that made them, in files of their own
(``metrics/timings/<stage>.json``).

Every stage writes its wall time and peak memory there (``stage``), and the training
stages each run's minutes and images/s with the machine that ran it. Nothing else a stage
writes holds a time, a date or a machine, so models, predictions and metrics have stable
hashes and DVC can tell a rerun that reproduced them (the timing files are
``cache: false`` outputs). ``make bench`` collects the stage entries.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from importlib import metadata
from pathlib import Path

from bloodcells.paths import project_root, write_json

LIBRARIES = ("tensorflow", "keras", "scikit-learn", "imbalanced-learn", "numpy", "pillow", "dvc")

TIMINGS = Path("metrics/timings")


def peak_rss_mib() -> float:
    """Peak resident memory (MiB) of this process and of its largest finished child.

    The notebook's kernel is a child process, so after it exits its peak is included.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)  # Linux reports KiB


def timings_path(stage: str, root: Path | None = None) -> Path:
    return (root or project_root()) / TIMINGS / f"{stage}.json"


def read_timings(stage: str, root: Path | None = None) -> dict:
    path = timings_path(stage, root)
    return json.loads(path.read_text()) if path.is_file() else {}


def record_timing(stage: str, entry: str, info: dict, root: Path | None = None) -> Path:
    """Set ``entry`` of ``metrics/timings/<stage>.json`` to ``info`` (atomically)."""
    body = read_timings(stage, root)
    body[entry] = info
    return write_json(timings_path(stage, root), body)


def record_stage_time(name: str, seconds: float, root: Path | None = None) -> Path:
    """The ``stage`` entry of ``metrics/timings/<name>.json``: wall time and peak memory."""
    return record_timing(
        name,
        "stage",
        {
            "stage": name,
            "seconds": round(seconds, 1),
            "peak_rss_mib": peak_rss_mib(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        root,
    )


def timed_stage(
    argv: list[str] | None, doc: str, name: str, work, metrics: bool = False
) -> tuple[object, float]:
    """A training stage's command: no options (``--help`` prints the first line of ``doc``),
    then ``work(params)`` on the active params, its wall time recorded as
    ``metrics/timings/train-<name>.json`` and, with ``metrics``, its result (a mapping) as
    the stage's metrics, ``metrics/<name>.json``. Returns the result and the minutes."""
    import argparse

    from bloodcells.config import load_params

    argparse.ArgumentParser(description=doc.splitlines()[0]).parse_args(argv)
    params = load_params()
    t0 = time.perf_counter()
    result = work(params)
    if metrics:
        write_json(project_root() / "metrics" / f"{name}.json", result)
    seconds = time.perf_counter() - t0
    record_stage_time(f"train-{name}", seconds)
    return result, seconds / 60


def git_output(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: CPU flags that decide how fast oneDNN trains (lscpu / /proc/cpuinfo names).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16")


def hardware() -> dict:
    """The machine a number was measured on: CPU model, its vector extensions, the cores
    this process may use (``taskset``), oneDNN's ISA cap if set, and any GPUs."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        info = dict(
            line.split(":", 1)
            for line in Path("/proc/cpuinfo").read_text().splitlines()[:40]
            if ":" in line
        )
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = info.get("model name", cpu)
        flags = set(info.get("flags", "").split())
    except OSError:
        pass
    gpus = []
    try:
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # noqa: BLE001 - hardware description must never fail a run
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        # "0": TensorFlow's own kernels, not oneDNN's (bloodcells/__init__.py turns them on)
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "gpus": gpus,
        "platform": platform.platform(),
    }


def describe_machine(hw: dict) -> str:
    """One line naming the machine as every timing must: CPU, cores, vector extensions,
    oneDNN cap (or oneDNN off), GPUs."""
    isa = hw.get("isa") or []
    top = "AMX" if "amx_bf16" in isa else "AVX-512" if "avx512f" in isa else "AVX2"
    if "avx2" not in isa and top == "AVX2":
        top = "no AVX2"
    cap = hw.get("onednn_max_cpu_isa")
    line = f"{hw['cpu']}, {hw['cores']} cores, {top}"
    if cap:
        line += f" (oneDNN capped to {cap})"
    if hw.get("onednn_opts") == "0":
        line += " (TensorFlow's oneDNN kernels off)"
    return line + f", GPUs: {', '.join(hw.get('gpus') or []) or 'none'}"


def run_provenance() -> dict:
    """Where a run ran: code commit, Python and library versions, machine."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "git_commit": git_output("rev-parse", "HEAD"),
        "git_dirty": bool(git_output("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "libraries": versions,
        "hardware": hardware(),
    }
