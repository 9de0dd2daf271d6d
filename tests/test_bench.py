"""make bench: every measurement runs on the sample and lands in reports/bench.{json,md}."""

from __future__ import annotations

import copy
import json

from bloodcells import bench
from bloodcells.config import load_params
from bloodcells.timing import record_stage_time
from tests.conftest import ROOT, mini_project


def test_bench_measures_and_collects(tmp_path, built, sample_dir):
    root = mini_project(tmp_path, built[0], sample_dir)
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/PBC_dataset_normal_DIB").symlink_to(sample_dir)
    record_stage_time("02_cnn", 75.0, root)
    record_stage_time("01_preprocessing", 5.0, root)
    params = copy.deepcopy(load_params(ROOT / "params.yaml", profile="smoke"))
    params["models"]["cnn"]["image_size"] = 32

    out = bench.run_bench(params, [32], ["cnn"], steps=2, workers=1, root=root)

    assert out["decode_resize"]["32"]["images"] == len(built[0])
    assert out["decode_resize"]["32"]["images_per_second"] > 0
    (fam,) = out["families"]
    assert fam["key"] == "cnn" and fam["image_size"] == 32 and fam["batch_size"] == 32
    assert fam["train_images_per_second"] > 0 and fam["inference_images_per_second"] > 0
    assert fam["parameter_count"] > 1000
    st = out["stage_times"]
    assert st["total_seconds"] == 80.0 and {s["stage"] for s in st["stages"]} == {
        "02_cnn",
        "01_preprocessing",
    }
    assert st["peak_rss_mib"] > 0
    saved = json.loads((root / "reports/bench.json").read_text())
    assert saved["families"][0]["train_images_per_second"] == fam["train_images_per_second"]
    md = (root / "reports/bench.md").read_text()
    assert "| cnn | 32 | 32 |" in md
    assert "**all stages** | **1.3 min**" in md
    assert f"{fam['parameter_count']:,}" in md


def test_bench_without_a_previous_run(tmp_path):
    assert bench.stage_times(tmp_path) == {
        "stages": [],
        "total_seconds": 0,
        "largest_stage": None,
        "peak_rss_mib": None,
    }
    assert bench.recorded_runs(tmp_path) == []
