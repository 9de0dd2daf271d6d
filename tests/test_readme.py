"""The README, executed as a newcomer would: every runnable ```bash block, in order, in a
fresh shell (`env -i` plus HOME and a system PATH) in a fresh copy of the project under the
smoke profile (the ``readme_run`` fixture in conftest.py)."""

from __future__ import annotations

import csv
import json
import re

import pytest

from bloodcells import robust
from bloodcells.config import load_params
from tests.conftest import ROOT, STAND_INS, readme_blocks, repro_block

pytestmark = pytest.mark.e2e


def block(blocks, start: str):
    return next(b for b in blocks if b.code.startswith(start))


def test_every_block_is_run_or_says_why_not(readme_run):
    _, blocks = readme_run
    assert len(blocks) >= 7
    for b in blocks:
        if b.why_not_run:
            assert len(b.why_not_run) > 10, b.line
            continue
        assert b.returncode == 0, f"README line {b.line}:\n{b.code}\n{b.output[-6000:]}"


def test_the_blocks_are_the_ones_a_user_needs():
    runnable = "".join(b.code for b in readme_blocks() if not b.why_not_run)
    for command in ("make repro", "bloodcells-predict", "bloodcells-evaluate",
                    "dvc exp run --queue", "dvc push", "dvc pull", "make bench",
                    "make estimate", "bloodcells-adapt"):  # fmt: skip
        assert command in runnable, command


def test_repro_prints_the_estimate_first(readme_run):
    _, blocks = readme_run
    out = repro_block(blocks).output
    assert "Estimated training time, profile 'smoke'" in out
    assert out.index("Estimated training time") < out.index("Running stage 'data'")
    assert "min left for this model" in out  # each training stage shows the time left


def test_bench_of_one_family_names_the_machine(readme_run):
    work, blocks = readme_run
    assert block(blocks, "make estimate").returncode == 0
    bench = json.loads((work / "reports/bench.json").read_text())
    assert [f["key"] for f in bench["families"]] == ["cnn"]
    assert "cores" in (work / "reports/bench.md").read_text().splitlines()[2]


def test_predict_wrote_one_row_per_platelet(readme_run):
    work, _ = readme_run
    rows = list(csv.DictReader((work / "predictions.csv").open()))
    platelets = list((work / "data/raw/PBC_dataset_normal_DIB/platelet").iterdir())
    assert len(rows) == len(platelets) > 0


def test_evaluate_scored_the_labelled_copy(readme_run):
    work, blocks = readme_run
    result = json.loads((work / "lab.json").read_text())
    assert len(result["classes_present"]) == 8  # the sample has every class
    images = sum(1 for p in (work / "data/raw/PBC_dataset_normal_DIB").rglob("*.jpg"))
    assert result["images"] + len(result["errors"]) == images
    assert (
        "argmax over the classes present" in block(blocks, ".venv/bin/bloodcells-evaluate").output
    )


def test_the_queued_sweep_reran_only_the_remedies_study(readme_run):
    _, blocks = readme_run
    out = block(blocks, "source .venv/bin/activate").output
    assert "Running stage 'train-robust'" in out and "Running stage 'report-robust'" in out
    assert "Stage 'preprocess' didn't change, skipping" in out
    for other in ("cnn", "unet", "xception"):
        assert f"Running stage 'train@{other}'" not in out
    for other in ("hybrid", "supcon"):
        assert f"Running stage 'train-{other}'" not in out
    assert "Running stage 'generalisation'" not in out
    assert "stain-0.1" in out  # dvc exp show lists it
    # models/robust persists, so the remedies whose training key is unchanged are reused:
    # only the runs with the stain jitter retrain, as the README says
    smoke = load_params(ROOT / "params.yaml", profile="smoke")["robust_training"]["remedies"]
    jittered = {r for r in smoke if r in robust.AUGMENTED}
    assert "stain_augmentation" in jittered and len(jittered) < len(smoke)
    assert set(re.findall(r"\[(\w+)_s\d+\] epoch 1/", out)) == jittered


def test_a_second_checkout_pulls_everything_and_has_nothing_to_rerun(readme_run):
    work, blocks = readme_run
    out = block(blocks, "git clone").output
    assert out.count("Data and pipelines are up to date.") == 2  # dvc status, dvc repro
    assert "Running stage" not in out
    assert "stain-0.1" in out  # the experiment, pulled from the git remote
    copy = work.parent / "bloodcells-copy"
    for path in ("export/best.keras", "metrics/summary.json", "reports/index.html"):
        assert (copy / path).read_bytes() == (work / path).read_bytes(), path


def test_each_stand_in_replaces_a_command_the_readme_runs():
    """The suite runs the README's blocks verbatim except for :data:`STAND_INS`; each of
    those must still match a run block, or it silently stops standing in."""
    run = [b.code for b in readme_blocks() if not b.why_not_run]
    for said in STAND_INS:
        assert sum(code.count(said) for code in run) == 1, said


def test_adapt_wrote_a_model_the_other_commands_read(readme_run):
    from bloodcells.export import read_metadata

    work, blocks = readme_run
    said = block(blocks, ".venv/bin/bloodcells-adapt").output
    assert "wrote adapted.keras: few-shot" in said
    meta = read_metadata(work / "adapted.keras")
    assert meta["adapted"]["method"] == "few-shot"
    assert max(meta["adapted"]["images_per_class"].values()) <= 10
    assert meta["model"] == read_metadata(work / "export/best.keras")["model"]
