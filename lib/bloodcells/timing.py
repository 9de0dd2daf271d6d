"""Wall time and peak memory of each stage run, for ``make bench``'s stage table."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from bloodcells.paths import project_root


def peak_rss_mib() -> float:
    """Peak resident memory (MiB) of this process and of its largest finished child.

    The notebook's kernel is a child process, so after it exits its peak is included.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)  # Linux reports KiB


def record_stage_time(name: str, seconds: float, root: Path | None = None) -> Path:
    """Write ``metrics/stages/<name>.json``: wall time and peak memory of a stage run.

    ``make bench`` collects these into its table of stage wall times.
    """
    out = (root or project_root()) / "metrics" / "stages" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "stage": name,
        "seconds": round(seconds, 1),
        "peak_rss_mib": peak_rss_mib(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out
