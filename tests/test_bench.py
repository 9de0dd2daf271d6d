"""make bench: every measurement runs on the sample and lands in reports/bench.{json,md}."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from bloodcells import ablation, bench
from bloodcells.config import load_params
from bloodcells.timing import record_stage_time
from tests.conftest import ROOT, fresh_python, mini_project


@pytest.fixture(scope="module")
def benched(tmp_path_factory, built, sample_dir) -> tuple[Path, dict, dict]:
    """One bench of the CNN at 32 px on the sample, in a mini project with two recorded
    stage times: its root, its output and the params it ran with (shared by the tests
    below: each bench costs about 35 s on a 2-core AVX2 CPU)."""
    root = mini_project(tmp_path_factory.mktemp("bench"), built[0], sample_dir)
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/PBC_dataset_normal_DIB").symlink_to(sample_dir)
    record_stage_time("02_cnn", 75.0, root)
    record_stage_time("01_preprocessing", 5.0, root)
    params = copy.deepcopy(load_params(ROOT / "params.yaml", profile="smoke"))
    params["models"]["cnn"]["image_size"] = 32
    out = bench.run_bench(params, [32], ["cnn"], steps=2, workers=1, root=root)
    return root, out, params


def test_bench_measures_and_collects(benched, built):
    root, out, _ = benched
    assert out["decode_resize"]["32"]["images"] == len(built[0])
    assert out["decode_resize"]["32"]["images_per_second"] > 0
    (fam,) = out["families"]
    assert fam["key"] == "cnn" and fam["image_size"] == 32 and fam["batch_size"] == 32
    assert fam["train_images_per_second"] > 0 and fam["inference_images_per_second"] > 0
    assert fam["parameter_count"] > 1000
    # the pipeline costs something, and far less than the step it feeds
    assert 0 < fam["input_cpu_share"] < 0.5 and 0 <= fam["kernel_cpu_share"] < 1
    assert fam["in_memory_images_per_second"] > 0
    low, high = fam["pipeline_overhead_range"]  # each round's own ratio, lowest to highest
    assert low <= high and fam["pipeline_startup_steps"] > 0
    assert f"rounds {100 * low:+.0f} to {100 * high:+.0f}%" in bench.markdown(out)
    st = out["stage_times"]
    assert st["total_seconds"] == 80.0 and {s["stage"] for s in st["stages"]} == {
        "02_cnn",
        "01_preprocessing",
    }
    assert st["peak_rss_mib"] > 0
    saved = json.loads((root / "reports/bench.json").read_text())
    assert saved["families"][0]["train_images_per_second"] == fam["train_images_per_second"]
    md = (root / "reports/bench.md").read_text()
    assert "| cnn | 32 | 32 |" in md and bench.describe_machine(out["machine"]) in md
    assert out["machine"]["isa"] == bench.hardware()["isa"]
    assert "**all stages** | **1.3 min**" in md
    assert f"{fam['parameter_count']:,}" in md


def test_native_and_capped_side_by_side(benched, monkeypatch):
    """make bench-both: the same bench natively and in a process capped to AVX2 (oneDNN's
    own cap, set before TensorFlow loads), merged into one table of native / capped."""
    import os
    import subprocess
    import sys

    root, native, params = benched
    (root / "params.json").write_text(json.dumps(params))
    script = (
        "import json, sys; from pathlib import Path; from bloodcells import bench; "
        "root = Path(sys.argv[1]); params = json.loads((root / 'params.json').read_text()); "
        "bench.run_bench(params, [], ['cnn'], steps=2, root=root, name='bench-avx2')"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    subprocess.run([sys.executable, "-c", script, str(root)], env=env, check=True, timeout=300)
    capped = json.loads((root / "reports/bench-avx2.json").read_text())
    assert capped["machine"]["onednn_max_cpu_isa"] == "AVX2"
    assert native["machine"]["onednn_max_cpu_isa"] is None
    assert native["commit"] == capped["commit"] == bench.code_version(root)

    reports = root / "reports"
    files = [str(reports / "bench.json"), str(reports / "bench-avx2.json")]
    monkeypatch.setenv("BLOODCELLS_ROOT", str(root))
    assert bench.main(["--side-by-side", *files]) == 0
    md = (reports / "bench-side-by-side.md").read_text()
    a, b = native["families"][0], capped["families"][0]
    row = next(line for line in md.splitlines() if line.startswith("| cnn |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{a['train_images_per_second']:,.1f} / {b['train_images_per_second']:,.1f}"
    slowdown = a["train_images_per_second"] / b["train_images_per_second"]
    assert cells[3] == f"{slowdown:.2f}x"
    assert cells[8] == (
        f"{a['inference_images_per_second']:,.1f} / {b['inference_images_per_second']:,.1f}"
    )
    assert f"Capped ({capped['date']}): {bench.describe_machine(capped['machine'])}" in md
    assert "(oneDNN capped to AVX2)" in md.split("- Capped")[1].splitlines()[0]
    assert "capped to" not in md.split("- Native")[1].splitlines()[0]

    with pytest.raises(ValueError, match="differ in commit"):
        bench.side_by_side(native, {**capped, "commit": "0000000"})
    with pytest.raises(SystemExit, match="bench-missing.json"):
        bench.write_side_by_side(reports / "bench.json", reports / "bench-missing.json", root)


def test_the_commit_names_a_changed_tree():
    head = subprocess_out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = subprocess_out("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    assert bench.code_version(ROOT) == head + ("+changes" if dirty else "")
    assert bench.code_version(Path("/")) == "unknown"


def subprocess_out(*cmd: str) -> str:
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def test_bench_without_a_previous_run(tmp_path):
    assert bench.stage_times(tmp_path) == {
        "stages": [],
        "total_seconds": 0,
        "largest_stage": None,
        "peak_rss_mib": None,
    }
    assert bench.recorded_runs(tmp_path) == []


def test_estimate_plans_every_run_and_multiplies_out(tmp_path, monkeypatch):
    from bloodcells import estimate

    params = load_params(ROOT / "params.yaml", profile="smoke")
    runs = estimate.plan(params, n_train=700, n_val=170, n_test=380)
    assert sum(r.what.startswith("CV fold") for r in runs) == params["cross_validation"]["folds"]
    shuffling = [r for r in runs if r.stage == "shuffling"]
    assert len(shuffling) == 2 * len(params["shuffling"]["seeds"])
    # the paper's protocol over all 1,250 images: 875 train (70%), its last 20% validating
    assert {(r.train, r.val) for r in shuffling} == {(700, 175)}
    assert [r.what for r in runs if r.key == "resnet50"] == ["resnet50 (sgd)", "resnet50 (rmsprop)"]
    smote = params | {
        "models": params["models"] | {"unet": params["models"]["unet"] | {"balance": "smote"}}
    }
    grown = next(r for r in estimate.plan(smote, 700, 170) if r.key == "unet")
    assert grown.train == round(700 * estimate.SMOTE_GROWTH) > 700  # SMOTE grows the split
    assert {r.stage for r in runs} == {
        "cnn", "unet", "resnet50", "vgg16", "densenet201", "mobilenetv2",
        "cross-validation", "shuffling", "train-robust", "train-seeds", "inceptionv3",
        "xception", "hybrid", "supcon", "train-matched", "train-ablation",
    }  # fmt: skip
    ablated = [(r.what, r.epochs, dict(r.overrides)) for r in runs if r.stage == "train-ablation"]
    ab = params["ablation"]
    chosen = ablation.selected(ab)  # the changes `run` selects, not all those listed
    assert list(chosen) == ab["run"] and set(chosen) < set(ab["changes"])
    assert ablated == [
        (f"{name} seed {seed}", ab["epochs"], chosen.get(name, {}))
        for name in ["base", *chosen]
        for seed in ab["seeds"]
    ]
    # the seed spread: each seeded family's other seeds, not its own run again
    # (SupCon's: its pre-training on two views, its probe and its cross-entropy control)
    seeded = [(r.key, r.what, r.epochs) for r in runs if r.stage == "train-seeds"]
    sup = params["models"]["supcon"]
    assert seeded == [
        ("cnn", "cnn seed 43", params["models"]["cnn"]["epochs"]),
        ("supcon", "supcon seed 43 (contrastive pre-training)", sup["epochs"]),
        ("supcon", "supcon seed 43 (classifier probe)", sup["classifier_epochs"]),
        ("supcon", "supcon seed 43 (cross-entropy control)", sup["epochs"]),
    ]
    assert [r.views for r in runs if r.stage == "train-seeds"] == [1, 2, 1, 1]
    # a study's epochs replace the entry's own: the hybrid's joint phase, SupCon's pre-training
    over = params | {"seed_spread": {"runs": ["hybrid", "supcon"], "seeds": [1, 2], "epochs": 3}}
    seeded = [(r.what, r.epochs) for r in estimate.plan(over, 700, 170) if r.stage == "train-seeds"]
    frozen = params["models"]["hybrid"]["frozen_epochs"]
    assert seeded == [
        (f"hybrid seed {seed} (joint + frozen phases)", 3 + frozen) for seed in (1, 2)
    ] + [
        (f"supcon seed {seed} ({part})", epochs)
        for seed in (1, 2)
        for part, epochs in [
            ("contrastive pre-training", 3),
            ("classifier probe", sup["classifier_epochs"]),
            ("cross-entropy control", 3),
        ]
    ]
    robust = params["robust_training"]
    remedies = [r for r in runs if r.stage == "train-robust"]
    assert len(remedies) == len(robust["remedies"]) * len(robust["seeds"])
    assert {r.config(params).image_size for r in remedies} == {robust["image_size"]}
    calls = []

    def fake(params, run):  # 100 images/s training, 400 inference, for every model
        calls.append(run.what)
        return {"train": 100.0, "inference": 400.0}

    monkeypatch.setattr(estimate, "calibrate", fake)
    # full-data sizes: every run long enough to calibrate (the sample's are not: below)
    monkeypatch.setattr(estimate, "split_sizes", lambda params, root: (7000, 1700, 3800))
    out = estimate.estimate(params, tmp_path, tmp_path / "cache.json")
    runs = estimate.plan(params, 7000, 1700, 3800)
    assert out["not_calibrated"] == [] and len(out["runs"]) == len(runs)
    hybrid = next(r for r in runs if r.key == "hybrid")
    assert hybrid.frozen_epochs == params["models"]["hybrid"]["frozen_epochs"] > 0
    # frozen epochs cost forward passes only; validation costs inference every epoch
    expected = sum(
        (r.epochs - r.frozen_epochs) * r.views * r.train / 100
        + r.frozen_epochs * r.train / 400
        + r.epochs * r.val / 400
        for r in runs
    )
    assert out["total_seconds"] == pytest.approx(expected)
    assert len(calls) < len(runs)  # configurations shared between runs are calibrated once
    calls.clear()
    again = estimate.estimate(params, tmp_path, tmp_path / "cache.json")
    assert calls == [] and again["total_seconds"] == pytest.approx(expected)  # from the cache
    text = estimate.report(out)
    assert f"{expected / 60:7.1f} min" in text and "profile 'smoke'" in text


def test_a_head_only_hybrid_is_calibrated_and_costs_forward_passes(tmp_path, monkeypatch):
    """``models.hybrid.epochs: 0`` (the frozen phase alone): its steps are forward passes,
    but steps, so it is calibrated like any long run and costed at inference speed."""
    from bloodcells import estimate

    params = copy.deepcopy(load_params(ROOT / "params.yaml", profile="smoke"))
    params["models"]["hybrid"] |= {"epochs": 0, "frozen_epochs": 2}
    hybrid = next(r for r in estimate.plan(params, 7000, 1700, 3800) if r.key == "hybrid")
    assert (hybrid.epochs, hybrid.frozen_epochs) == (2, 2)
    assert estimate.training_steps(hybrid, 8) == 2 * 875 >= estimate.MIN_STEPS
    monkeypatch.setattr(estimate, "calibrate", lambda p, run: {"train": 10.0, "inference": 400.0})
    monkeypatch.setattr(estimate, "split_sizes", lambda params, root: (7000, 1700, 3800))
    out = estimate.estimate(params, tmp_path, tmp_path / "cache.json")
    row = next(r for r in out["runs"] if r["stage"] == "hybrid")
    assert row["seconds"] == pytest.approx(2 * 7000 / 400 + 2 * 1700 / 400)  # no training


def test_runs_too_short_to_time_are_not_calibrated(tmp_path, monkeypatch, built, sample_dir):
    """The smoke profile on the sample: every run is a few steps, so the estimate calibrates
    none (it would take longer than the training) and says so; one long run is calibrated."""
    from bloodcells import estimate

    params = load_params(ROOT / "params.yaml", profile="smoke")
    root = mini_project(tmp_path, built[0], sample_dir)
    calls = []
    monkeypatch.setattr(estimate, "calibrate", lambda p, run: calls.append(run.what) or {})
    out = estimate.estimate(params, root, tmp_path / "cache.json")
    planned = estimate.plan(params, *estimate.split_sizes(params, root))
    assert calls == [] and out["runs"] == [] and out["total_seconds"] == 0
    assert out["not_calibrated"] == [r.what for r in planned]
    assert f"not calibrated: {len(planned)} runs of under {estimate.MIN_STEPS} steps" in (
        estimate.report(out)
    )
    # the boundary: MIN_STEPS steps of the CNN's batch are calibrated, one image fewer not
    run = next(r for r in planned if r.key == "cnn")
    batch = run.config(params).batch_size
    enough = estimate.MIN_STEPS * batch // run.epochs
    assert estimate.training_steps(replace(run, train=enough), batch) == estimate.MIN_STEPS
    assert estimate.training_steps(replace(run, train=enough - batch), batch) < estimate.MIN_STEPS
    # per epoch, as the trainer counts: one image over a whole batch is one more step each
    assert estimate.training_steps(replace(run, train=enough + 1), batch) == (
        estimate.MIN_STEPS + run.epochs
    )


def test_calibration_trains_the_real_model(tmp_path):
    from bloodcells import estimate

    params = load_params(ROOT / "params.yaml", profile="smoke")
    run = estimate.Run("cnn", "cnn", "cnn", (("image_size", 32),), 1, 64, 16)
    speed = estimate.calibrate(params, run, steps=2, warmup=1)
    assert speed["train"] > 0 and speed["inference"] > speed["train"] / 10


def test_split_sizes_from_the_manifest(tmp_path, built, sample_dir):
    from bloodcells import estimate

    root = mini_project(tmp_path, built[0], sample_dir)
    counts = built[0]["split"].value_counts()
    params = load_params(ROOT / "params.yaml", profile="smoke")
    assert estimate.split_sizes(params, root) == (counts["train"], counts["val"], counts["test"])


def test_the_machine_is_named_with_its_vector_extensions_and_cap(monkeypatch):
    from bloodcells.timing import describe_machine, hardware

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    hw = hardware()
    assert hw["onednn_max_cpu_isa"] == "AVX2" and hw["cores"] >= 1
    flags = Path("/proc/cpuinfo").read_text()
    assert ("avx2" in hw["isa"]) == (" avx2" in flags)
    base = {"cpu": "X", "cores": 2, "gpus": [], "onednn_max_cpu_isa": None}
    assert describe_machine({**base, "isa": ["avx2", "fma"]}) == "X, 2 cores, AVX2, GPUs: none"
    assert describe_machine({**base, "isa": ["avx2", "avx512f"]}).startswith("X, 2 cores, AVX-512")
    capped = describe_machine({**base, "isa": ["avx2", "avx512f", "amx_bf16"],
                               "onednn_max_cpu_isa": "AVX2"})  # fmt: skip
    assert capped == "X, 2 cores, AMX (oneDNN capped to AVX2), GPUs: none"
    off = describe_machine({**base, "isa": ["avx2", "fma"], "onednn_opts": "0"})
    assert off == "X, 2 cores, AVX2 (TensorFlow's oneDNN kernels off), GPUs: none"


@pytest.mark.parametrize(("setting", "on"), [(None, True), ("0", False)])
def test_importing_the_study_turns_tensorflows_onednn_kernels_on_unless_told_not_to(setting, on):
    """TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI, BF16 or AMX;
    on an AVX2 CPU its own kernels train ResNet-50 2.8x slower (decision 021). Any entry
    point imports ``bloodcells`` before TensorFlow, which then runs with oneDNN, unless the
    environment says ``TF_ENABLE_ONEDNN_OPTS=0``. A fresh interpreter: TensorFlow reads
    the variable once, when first imported. (A value it is given, ``setdefault`` keeps:
    the ``0`` case shows it.)"""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = (
        "import bloodcells, tensorflow\n"
        "from tensorflow.python.util import _pywrap_util_port as port\n"
        "from bloodcells.timing import hardware\n"
        "print(port.IsMklEnabled(), hardware()['onednn_opts'])"
    )
    out = fresh_python(code, env=env | {"TF_CPP_MIN_LOG_LEVEL": "3"}).split()
    assert out == [str(on), setting or "1"]


def test_smote_growth_is_what_smote_does_to_the_samples_training_split(built):
    """The estimate's growth factor, checked against imbalanced-learn's SMOTE itself on
    the sample's training labels (their counts are uneven, like the dataset's)."""
    import numpy as np
    from imblearn.over_sampling import SMOTE

    from bloodcells import estimate

    y = built[0].query("split == 'train'")["label"].to_numpy()
    counts = {c: int((y == c).sum()) for c in np.unique(y)}
    assert len(set(counts.values())) > 1  # uneven, or the check would be trivial
    x = np.random.default_rng(0).normal(size=(len(y), 4))
    _, grown = SMOTE(k_neighbors=1, random_state=0).fit_resample(x, y)
    assert len(grown) / len(y) == pytest.approx(estimate.smote_growth(counts))
    assert round(estimate.SMOTE_GROWTH, 3) == 1.558  # 8 x 3,329 / 17,092


def test_a_training_stage_command_times_its_work_into_its_timings_file(
    tmp_path, monkeypatch, capsys
):
    """``timing.timed_stage``, the shared body of the study stages' commands."""
    from bloodcells.timing import timed_stage

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.setenv("BLOODCELLS_ROOT", str(tmp_path))
    result, minutes = timed_stage(
        [], "Train a study.\nMore.", "study", lambda p: {"profile": p["profile"]}, metrics=True
    )
    assert result == {"profile": load_params(ROOT / "params.yaml")["profile"]} and minutes >= 0
    assert json.loads((tmp_path / "metrics/study.json").read_text()) == result
    stage = json.loads((tmp_path / "metrics/timings/train-study.json").read_text())["stage"]
    assert stage["seconds"] >= 0 and stage["peak_rss_mib"] > 0
    with pytest.raises(SystemExit):
        timed_stage(["--help"], "Train a study.\nMore.", "study", lambda p: 1 / 0)
    assert "Train a study." in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a study stage takes no options
        timed_stage(["--fast"], "Train a study.", "study", lambda p: 1 / 0)


def test_a_timed_fit_leaves_a_new_iterators_start_up_out(monkeypatch):
    """Training creates its iterator once a run, so the bench times steps in steady state: a
    pipeline whose first batch costs 100 s (on a clock of the test's) shows it as start-up,
    not in the per-step seconds."""
    import types

    import keras
    import numpy as np
    import tensorflow as tf

    clock = {"now": 0.0}

    def perf_counter() -> float:  # a tick a reading, plus what the pipeline spends
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=perf_counter))
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype("float32")
    y = np.eye(8, dtype="float32")[[0, 1, 2, 3]]

    def batches():
        clock["now"] += 100.0  # the first batch of every new iterator
        while True:
            yield x, y

    spec = (tf.TensorSpec((4, 8, 8, 3), tf.float32), tf.TensorSpec((4, 8), tf.float32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(8, activation="softmax"))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    out = bench.timed_fit(model, ds, steps=3)
    assert out["seconds"] == 1.0  # the clock read when the first step ends and the last
    assert out["startup"] == (102.0 - 1.0) / (1.0 / 3) and out["steps"] == 3
    assert out["cpu"] >= 0 and 0 <= out["kernel"] <= 1
    # past `steps`, until `min_seconds` have passed (a reading a step: 3 s after 5 steps) or
    # `max_steps` are timed, whichever comes first
    clock["now"] = 0.0
    out = bench.timed_fit(model, ds, steps=3, min_seconds=3.0, max_steps=10)
    assert (out["steps"], out["seconds"]) == (5, 3.0)
    clock["now"] = 0.0
    out = bench.timed_fit(model, ds, steps=3, min_seconds=3.0, max_steps=4)
    assert (out["steps"], out["seconds"]) == (4, 2.0)
