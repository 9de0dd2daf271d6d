"""End to end: what every stage of the smoke DAG wrote, in the README's run of it (the
``smoke_dag`` fixture in conftest.py: a fresh copy of the project, ``make repro``). An
independent rerun of its training stages gives the same bytes (tests/test_dag.py); the
README's commands are checked in tests/test_readme.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bloodcells import seeds
from bloodcells.config import load_params
from bloodcells.report import pct
from tests.conftest import ROOT

FAMILY_REPORTS = {
    "cnn": "02_cnn",
    "unet": "03_unet",
    "resnet50": "04_resnet50",
    "vgg16": "05_vgg16",
    "densenet201": "06_densenet201",
    "mobilenetv2": "07_mobilenetv2",
    "inceptionv3": "08_inceptionv3",
    "xception": "09_xception",
    "hybrid": "10_hybrid",
    "supcon": "11_supcon",
}

pytestmark = pytest.mark.e2e


def test_every_stage_ran_and_left_its_outputs(smoke_dag):
    for out in (
        "data/raw/PBC_dataset_normal_DIB/.verified",
        "data/interim/manifest.csv",
        "data/processed/32/train_x.npy",
        "data/processed/80/test_y.npy",
        "reports/notebooks/01_preprocessing.ipynb",
        "metrics/preprocess.json",
        "metrics/xception.json",
        "metrics/summary.json",
        "reports/index.html",
        "reports/model_card.md",
        "export/best.keras",
        "build/params/train-cnn.json",
        "build/inputs/cnn.json",
        "metrics/timings/train-cnn.json",
        "models/cross_validation/cv.json",
        "models/shuffling/shuffling.json",
        "reports/14_paper_protocol.html",
        "models/supcon/supcon/embeddings.npz",
        "reports/13_generalisation.html",
        "metrics/generalisation.json",
        "models/robust/shift.json",
        "reports/15_robust_training.html",
        "metrics/robust_training.json",
        "models/seed_spread/plan.json",
        "models/seed_spread/cnn_s43/predictions.npz",
        "models/seed_spread/supcon_ce_control_s43/embeddings.npz",
        "models/compute_matched/plan.json",
        "models/compute_matched/mobilenetv2_s43/predictions.npz",
        "metrics/compute_matched.json",
        "models/ablation/plan.json",
        "models/ablation/warmup_s43/predictions.npz",
        "metrics/ablation.json",
        "dvc.lock",
    ):
        assert (smoke_dag / out).is_file(), out


def test_preprocessing_report_shows_the_data_quality_numbers(smoke_dag):
    html = (smoke_dag / "reports/01_preprocessing.html").read_text()
    quality = json.loads((smoke_dag / "data/interim/data_quality.json").read_text())
    assert quality["images_kept"] == 106 and quality["files_scanned"] == 110
    assert f"<strong>{quality['files_scanned']:,}</strong> files" in html
    assert f"<strong>{quality['images_kept']:,}</strong> images are kept" in html
    for finding in ("neutrophil/.DS_169665.jpg", "BA_809918.jpg", "EO_225902.jpg"):
        assert finding in html
    assert html.count("data:image/png;base64") >= 2  # figures embedded, readable offline
    assert "Traceback" not in html


def test_metrics_are_readable_by_dvc(smoke_dag):
    out = subprocess.run(
        ["dvc", "metrics", "show", "--json"],
        cwd=smoke_dag,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)[""]["data"]["metrics/preprocess.json"]["data"]
    assert shown["images_kept"] == 106
    assert shown["split_sizes"]["test"] + shown["split_sizes"]["train"] > 0


@pytest.mark.parametrize(("key", "notebook"), FAMILY_REPORTS.items())
def test_family_report_shows_its_measured_numbers(smoke_dag, key, notebook):
    assert_family_report(smoke_dag, key, notebook)


def assert_family_report(project: Path, key: str, notebook: str) -> None:
    """The family's report in ``project`` renders and shows, for every variant it trained,
    the test accuracy that the run's saved predictions give, beside the paper's number."""
    html = (project / f"reports/{notebook}.html").read_text()
    assert "Traceback" not in html
    metrics = json.loads((project / f"metrics/{key}.json").read_text())
    variants = [v for v in metrics if v.startswith(key) and isinstance(metrics[v], dict)]
    assert variants, metrics.keys()
    for variant in variants:
        run = project / f"models/{key}/{variant}"
        record = json.loads((run / "run.json").read_text())
        preds = np.load(run / "predictions.npz")
        accuracy = float((preds["test_probs"].argmax(axis=1) == preds["test_y"]).mean())
        assert pct(accuracy) in html  # the number the run's saved predictions give
        assert metrics[variant]["image_size"] == record["image_size"]
        assert (run / "model.keras").is_file()
    assert "paper (reported" in html
    assert html.count("data:image/png;base64") >= 2


def test_resnet_compares_both_optimizers(smoke_dag):
    metrics = json.loads((smoke_dag / "metrics/resnet50.json").read_text())
    assert {"resnet50_sgd", "resnet50_rmsprop"} <= set(metrics)


def test_paper_protocol_report_has_cross_validation_and_the_shuffling_verdicts(smoke_dag):
    from bloodcells import report

    html = (smoke_dag / "reports/14_paper_protocol.html").read_text()
    cv = json.loads((smoke_dag / "metrics/cross_validation.json").read_text())
    study = json.loads((smoke_dag / "metrics/shuffling.json").read_text())
    params = yaml.safe_load((smoke_dag / "params.yaml").read_text())
    smoke = params["profiles"]["smoke"]
    assert len(cv["folds"]) == smoke["cross_validation"]["folds"] == 2
    assert cv["conv_widths"] == params["cross_validation"]["conv_widths"]
    assert all(f["best_epoch"] >= 1 and f["inner_val_images"] > 0 for f in cv["folds"])
    assert pct(cv["accuracy_mean"]) in html
    assert "inner validation split of the training folds" in html
    # the paper's protocol: both conditions for every seed, each on its own split
    seeds = smoke["shuffling"]["seeds"]
    assert {(r["seed"], r["condition"]) for r in study["runs"]} == {
        (s, c) for s in seeds for c in ("without", "with")
    }
    assert all(r["classes_in_fit"] == 8 for r in study["runs"])  # class-mixed, never sorted
    for condition in ("without", "with"):
        assert pct(study["conditions"][condition]["mean"]) in html
    assert f"{100 * study['gap']['mean']:+.2f} ± {100 * study['gap']['sd']:.2f} points" in html
    # every paper gap is judged in the report, with the verdict its numbers give
    for row in report.shuffling_gaps(study["gap"]):
        assert row["verdict"].split(":")[0] in html, row["model"]
    assert "Neither of the paper's conditions did this" in html
    assert "data-ordering" not in html and "Traceback" not in html


def test_supcon_has_its_cross_entropy_control(smoke_dag):
    metrics = json.loads((smoke_dag / "metrics/supcon.json").read_text())
    assert {"supcon", "supcon_ce_control"} <= set(metrics)
    html = (smoke_dag / "reports/11_supcon.html").read_text()
    assert "cross-entropy for" in html and "Temperature 0.1" in html


def test_comparison_audits_the_paper_against_its_notebooks(smoke_dag):
    from bloodcells import paper

    html = (smoke_dag / "reports/12_comparison.html").read_text()
    assert "The paper against its own notebooks" in html
    start = html.index("The paper against its own notebooks")
    audit = html[start : html.index("<h2", start + 1)]
    assert paper.COMMON_NOTES in audit
    for row in paper.audit_rows():  # every model's row, its notes in full (not cut at 50)
        assert f">{row['model']}</th>" in audit, row["model"]
        assert row["notebook output"] in audit, row
    assert "the paper prints InceptionV3" in audit  # Xception: notebook 97.17, printed 89.84
    assert "the paper swapped the two" in audit  # U-Net


def test_the_index_says_what_the_profile_cuts_from_overnight(smoke_dag):
    from bloodcells.plan import differences

    params = smoke_dag / "params.yaml"
    smoke, overnight = load_params(params), load_params(params, profile="overnight")
    rows = differences(smoke, overnight)
    assert rows  # the smoke profile cuts epochs, sizes, seeds, studies
    html = (smoke_dag / "reports/index.html").read_text()
    start = html.index("What this profile leaves out")
    section = html[start : html.index("<h2", start + 1)]
    assert f"these {len(rows)} settings differ from" in section
    for row in rows:  # every setting a row, with overnight's value beside
        assert f"<tr><td>{row['setting']}</td>" in section, row["setting"]
    here, there = smoke["models"]["cnn"]["epochs"], overnight["models"]["cnn"]["epochs"]
    assert f"<tr><td>models.cnn.epochs</td><td>{here}</td><td>{there}</td></tr>" in section


def test_champion_is_chosen_on_validation_and_reported(smoke_dag):
    summary = json.loads((smoke_dag / "metrics/summary.json").read_text())
    champ = summary["champion"]
    assert summary["best_chosen_by"] == "validation accuracy"
    assert champ["members"] and set(champ["members"]) <= set(champ["candidates"])
    assert 0.0 <= champ["test_accuracy"] <= 1.0 and "inference_images_per_second" not in champ
    timing = json.loads((smoke_dag / "metrics/timings/12_comparison.json").read_text())
    assert timing["champion"]["inference_images_per_second"] > 0
    report = (smoke_dag / "reports/12_comparison.html").read_text()
    assert "+ TTA" in report and "Traceback" not in report
    assert f"{100 * champ['test_accuracy']:.2f}% test accuracy" in report
    index = (smoke_dag / "reports/index.html").read_text()
    assert f"Champion: {champ['name']}" in index


def test_comparison_shows_the_seed_spread_and_calls_real_only_what_exceeds_it(smoke_dag):
    summary = json.loads((smoke_dag / "metrics/summary.json").read_text())
    seeded = summary["seed_spread"]["families"]
    section = load_params(smoke_dag / "params.yaml")["seed_spread"]
    names = {e: seeds.OWN_RECIPES.get(e, (e,)) for e in section["runs"]}  # SupCon: 2 models
    assert list(seeded) and set(seeded) == {f for fs in names.values() for f in fs}
    assert "supcon_ce_control" in seeded  # the smoke profile seeds an own recipe too
    plan = json.loads((smoke_dag / "models/seed_spread/plan.json").read_text())["runs"]
    assert {(r["key"], r["variant"]) for r in plan if r["seed"] == 42} == {
        (e, f) for e, fs in names.items() for f in fs
    }  # the smoke families' own seed: their own runs, not trained twice
    report = (smoke_dag / "reports/12_comparison.html").read_text()
    assert "Are the differences beyond the seed spread?" in report and "Traceback" not in report
    for family, entry in seeded.items():
        assert entry["seeds"] == section["seeds"]
        accs = []
        for run in plan:  # the family's own run (seed 42: models/<family>) or the study's
            if run["family"] == family:
                preds = np.load(
                    smoke_dag / "models" / run["key"] / run["variant"] / "predictions.npz"
                )
                accs.append(100 * (preds["test_probs"].argmax(1) == preds["test_y"]).mean())
        assert len(accs) == len(section["seeds"])
        assert entry["test_accuracy_mean"] == pytest.approx(np.mean(accs), abs=0.005)
        assert entry["test_accuracy_sd"] == pytest.approx(np.std(accs, ddof=1), abs=0.005)
        sentence = f"{family} {entry['test_accuracy_mean']:.2f}% ± {entry['test_accuracy_sd']:.2f}"
        assert sentence in report
    # a leader pair is real only when both models were seeded (never on significance alone)
    for a, b in summary["seed_spread"]["real_leader_pairs"]:
        assert [a, b] in summary["significant_pairs"]
        assert {a, b} <= set(seeded)
    index = (smoke_dag / "reports/index.html").read_text()
    for family, entry in seeded.items():  # the index's table: the spread beside the run
        row = index[index.index(f"<tr><td>{family}</td>") :].split("</tr>")[0]
        over = f"{entry['test_accuracy_mean']:.2f}% ± {entry['test_accuracy_sd']:.2f}"
        assert f"<td>{over} ({len(entry['seeds'])} seeds)</td>" in row
    assert "<td>one seed</td>" in index  # the families not retrained under other seeds


def test_comparison_ranks_the_families_on_one_protocol(smoke_dag):
    body = json.loads((smoke_dag / "metrics/compute_matched.json").read_text())
    section = load_params(smoke_dag / "params.yaml")["compute_matched"]
    assert body["run"] and body["protocol"] == section
    assert set(body["families"]) == set(section["families"])
    report = (smoke_dag / "reports/12_comparison.html").read_text()
    assert "The families on one protocol (compute-matched)" in report
    assert "Traceback" not in report
    for family, entry in body["families"].items():
        accs = []
        for seed in section["seeds"]:
            run = smoke_dag / "models/compute_matched" / f"{family}_s{seed}"
            preds = np.load(run / "predictions.npz")
            accs.append(100 * (preds["test_probs"].argmax(1) == preds["test_y"]).mean())
            record = json.loads((run / "run.json").read_text())
            assert (record["image_size"], record["epochs"]) == (
                section["image_size"],
                section["epochs"],
            )
        assert entry["test_accuracy_mean"] == pytest.approx(np.mean(accs), abs=0.005)
        assert entry["test_accuracy_sd"] == pytest.approx(np.std(accs, ddof=1), abs=0.005)
        ranked = f"{entry['rank']}. {family} {entry['test_accuracy_mean']:.2f}% ± "
        assert ranked + f"{entry['test_accuracy_sd']:.2f}" in report
    assert sorted(e["rank"] for e in body["families"].values()) == [1, 2]


def test_comparison_reports_the_ablation_on_validation(smoke_dag):
    """Notebook 12's ablation: each change's validation accuracy over seeds, from the runs'
    own validation predictions, and its verdict against the base."""
    body = json.loads((smoke_dag / "metrics/ablation.json").read_text())
    section = load_params(smoke_dag / "params.yaml")["ablation"]
    # the changes `ablation.run` selects (smoke: two of those listed), and only those
    assert body["run"] and set(body["changes"]) == {"base", *section["run"]}
    assert set(section["run"]) < set(section["changes"])
    report = (smoke_dag / "reports/12_comparison.html").read_text()
    assert "The recipe, one change at a time (ablation)" in report
    base_acc = {}
    for change, entry in body["changes"].items():
        accs = {}
        for seed in section["seeds"]:
            run = smoke_dag / "models/ablation" / f"{change}_s{seed}"
            preds = np.load(run / "predictions.npz")
            accs[seed] = 100 * (preds["val_probs"].argmax(1) == preds["val_y"]).mean()
            record = json.loads((run / "run.json").read_text())
            assert record["epochs"] == section["epochs"]
        assert entry["val_accuracy_mean"] == pytest.approx(np.mean(list(accs.values())), abs=0.005)
        if change == "base":
            base_acc = accs
            assert f"The base recipe reaches {entry['val_accuracy_mean']:.2f}%" in report
            continue
        diff = np.mean([accs[s] - base_acc[s] for s in section["seeds"]])
        assert entry["vs_base_points"] == pytest.approx(diff, abs=0.005)
        assert f"{change} (" in report and entry["verdict"] in report
    assert body["kept"] == [
        c for c, e in body["changes"].items() if (e.get("verdict") or "").startswith("kept")
    ]


def test_index_page_in_a_real_browser(smoke_dag):
    """The index loads, every report link resolves, no console errors, non-blank screenshot."""
    from urllib.parse import unquote, urlparse

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    from tests import browser

    assert browser.available(), (
        "Debian's chromium and chromium-driver are needed: `make browser` installs them."
    )
    index = smoke_dag / "reports" / "index.html"
    shots = ROOT / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with browser.chromium() as driver:
        driver.get(index.as_uri())
        assert "reproducible study" in driver.title
        assert driver.find_element(By.TAG_NAME, "table").is_displayed()
        links = [a.get_attribute("href") for a in driver.find_elements(By.TAG_NAME, "a")]
        assert len(links) == 16, links  # notebooks 01..15 and the model card
        assert browser.console_errors(driver) == []
        shot = shots / "smoke_index.png"
        driver.save_screenshot(str(shot))
        for link in links:
            target = Path(unquote(urlparse(link).path))
            assert target.is_file(), link
            driver.get(link)
            assert browser.console_errors(driver) == [], link
            if target.name == "model_card.html":  # rendered Markdown, not its syntax
                text = driver.find_element(By.TAG_NAME, "body").text
                assert "Not for diagnosis" in text
                for syntax in ("**", "`", "| ---", "## "):
                    assert syntax not in text, syntax
                cells = driver.find_elements(By.CSS_SELECTOR, "table td")
                assert cells and cells[0].value_of_css_property("border-top-style") == "solid"
                driver.save_screenshot(str(shots / "smoke_model_card.png"))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 5 and len(np.unique(pixels)) > 20  # not a blank page


def test_exported_best_model_predicts_from_the_command_line(smoke_dag, sample_dir):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(
        [
            "bloodcells-predict",
            "export/best.keras",
            str(sample_dir / "platelet"),
            "--quiet",
            "--json",
            "predictions.json",
        ],
        cwd=smoke_dag,
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads((smoke_dag / "predictions.json").read_text())
    assert len(data["predictions"]) == len(list((sample_dir / "platelet").iterdir()))


def test_generalisation_report_shows_every_model_under_every_shift(smoke_dag):
    from bloodcells import shift

    html = (smoke_dag / "reports/13_generalisation.html").read_text()
    assert "Traceback" not in html
    out = json.loads((smoke_dag / "metrics/generalisation.json").read_text())
    from bloodcells.compare import read_records

    records = read_records(smoke_dag)  # every family's runs (not the studies')
    assert {r["key"] for r in records} >= set(FAMILY_REPORTS)
    assert set(out["models"]) == {r["variant"] for r in records}
    assert out["shifts"] == list(shift.SHIFTS) and out["external"] == []
    params = yaml.safe_load((smoke_dag / "params.yaml").read_text())
    n = params["profiles"]["smoke"]["generalisation"]["test_images"]
    assert out["test_images"] == (n or len(np.load(smoke_dag / "data/processed/32/test_y.npy")))
    for name, row in out["models"].items():
        # clean accuracy on the subset = the run's saved test predictions on the same images
        preds = np.load(smoke_dag / f"models/{name.split('_')[0]}/{name}/predictions.npz")
        keep = shift.stratified_subset(preds["test_y"], n, params["generalisation"]["seed"])
        right = preds["test_probs"][keep].argmax(1) == preds["test_y"][keep]
        assert row["clean accuracy"] == pytest.approx(float(right.mean()), abs=1e-9), name
        assert 0.0 <= row["mean accuracy under shift"] <= 1.0
    exported = out["exported_model"]
    assert f"The exported model, **{exported}**".replace("**", "") in html.replace(
        "<strong>", ""
    ).replace("</strong>", "")
    assert "No external folders listed" in html
    assert html.count("data:image/png;base64") >= 2  # the strip and the heatmap
    # the exported model's out-of-distribution detector met every shift
    from bloodcells.export import read_metadata

    meta = read_metadata(smoke_dag / "export/best.keras")
    detector = meta["ood"]
    # exported: a model near the best on validation, the most robust of them on validation
    best_val = max(r["val_accuracy"] for r in records)
    within = params["generalisation"]["export_within"]
    assert meta["model"] in [r["model"] for r in meta["chosen_from"]]
    assert all(r["val_accuracy"] >= best_val - within for r in meta["chosen_from"])
    ood = out["ood"]
    assert ood["false_flag_rate_on_validation"] == detector["false_flag_rate"]
    assert 0.0 <= ood["flagged_clean_test"] <= 1.0 and 0.0 <= ood["flagged_under_shift"] <= 1.0
    assert "unlike its training data" in html


def test_generalisation_report_compares_the_remedies_without_retraining(smoke_dag):
    """AdaBN and few-shot adaptation of the exported model, on the smoke profile's shifts:
    the "none" row is the exported model as the shift benchmark scored it above."""
    out = json.loads((smoke_dag / "metrics/generalisation.json").read_text())
    adaptation = out["adaptation"]
    params = yaml.safe_load((smoke_dag / "params.yaml").read_text())
    smoke = params["profiles"]["smoke"]["generalisation"]["adapt"]
    assert {k: adaptation["settings"][k] for k in smoke} == smoke
    assert list(adaptation["summary"]) == ["none", "adabn", "few-shot"]
    exported = out["models"][out["exported_model"]]
    none = adaptation["summary"]["none"]
    assert none["clean accuracy"] == pytest.approx(exported["clean accuracy"], abs=1e-9)
    for row in adaptation["summary"].values():
        assert 0.0 <= row["mean accuracy under shift"] <= 1.0
    html = (smoke_dag / "reports/13_generalisation.html").read_text()
    assert "Remedies without retraining" in html and "few-shot adaptation on" in html


def test_remedies_report_shows_each_remedy_beside_the_baseline(smoke_dag):
    """Notebook 15: every remedy of the smoke profile trained, scored under the shifts on
    validation and test, and reported with the numbers its saved runs give."""
    html = (smoke_dag / "reports/15_robust_training.html").read_text()
    assert "Traceback" not in html
    metrics = json.loads((smoke_dag / "metrics/robust_training.json").read_text())
    params = load_params(smoke_dag / "params.yaml")  # under the smoke profile
    remedies = params["robust_training"]["remedies"]
    assert "normalisation_augmentation" in remedies  # smoke runs every remedy's code path
    assert list(metrics["remedies"]) == remedies
    assert metrics["chosen_on_validation"] in remedies
    scores = json.loads((smoke_dag / "models/robust/shift.json").read_text())["rows"]
    assert {(r["remedy"], r["split"]) for r in scores} == {
        (m, s) for m in remedies for s in ("val", "test")
    }
    for remedy in remedies:
        run = smoke_dag / f"models/robust/{remedy}_s42"
        preds = np.load(run / "predictions.npz")
        accuracy = float((preds["test_probs"].argmax(axis=1) == preds["test_y"]).mean())
        assert metrics["remedies"][remedy]["test accuracy"] == round(accuracy, 4)
        under = np.mean(
            [r["accuracy"] for r in scores if r["remedy"] == remedy and r["split"] == "test"
             and r["shift"] != "none"]
        )  # fmt: skip
        said = (
            f"{pct(under)} on average under the shifts"  # the baseline's sentence
            if remedy == "none"
            else f"<li><strong>{remedy}</strong>: {pct(under)} under shift"
        )
        assert said in html
    # each remedy's in-domain difference from the baseline, on the same test images
    differences = metrics["test_accuracy_difference_from_baseline"]
    assert list(differences) == [m for m in remedies if m != "none"]
    for remedy, d in differences.items():
        own = (
            metrics["remedies"][remedy]["test accuracy"]
            - metrics["remedies"]["none"]["test accuracy"]
        )
        assert d["difference"] == pytest.approx(own, abs=1e-4)
        assert d["ci low"] <= d["difference"] <= d["ci high"]
    assert "paired 95% CI" in html
    assert f"<strong>{metrics['chosen_on_validation']}</strong>" in html
    assert html.count("data:image/png;base64") >= 1  # the heatmap
