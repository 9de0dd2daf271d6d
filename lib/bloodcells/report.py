"""Tables and sentences for the reports, computed from run records (never typed in)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bloodcells.paper import PAPER_LABEL, PAPER_SETTINGS, paper_accuracy
from bloodcells.paths import CLASSES


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def ci(bounds: list[float]) -> str:
    return f"[{100 * bounds[0]:.2f}, {100 * bounds[1]:.2f}]"


def results_table(records: list[dict]) -> pd.DataFrame:
    """One row per trained model: its test scores with compute beside them."""
    rows = []
    for r in records:
        t = r["test"]
        rows.append(
            {
                "model": r["variant"],
                "test accuracy": pct(t["accuracy"]),
                "accuracy 95% CI": ci(t["ci95"]["accuracy"]),
                "macro-F1": pct(t["macro_f1"]),
                "macro-F1 95% CI": ci(t["ci95"]["macro_f1"]),
                "balanced acc.": pct(t["balanced_accuracy"]),
                "ECE": f"{t['ece']:.3f}",
                "best val acc.": pct(r["val_accuracy"]),
                "weights": r["weights"],
                "image size": f"{r['image_size']} px",
                "epochs": r["epochs"],
                "optimizer": r["optimizer"],
                "train min": r["train_minutes"],
                "params": f"{r['parameter_count']:,}",
            }
        )
    return pd.DataFrame(rows).set_index("model")


def per_class_table(record: dict) -> pd.DataFrame:
    """Precision, recall, F1 and support per class on the test split."""
    df = pd.DataFrame(record["test"]["per_class"]).T.reindex(list(CLASSES))
    df["support"] = df["support"].astype(int)
    return df.round(4)


def paper_comparison(key: str, records: list[dict]) -> pd.DataFrame:
    """The paper's reported accuracy beside this study's, with the settings of each."""
    rows = []
    for r in records:
        paper = paper_accuracy(key, r["variant"])
        rows.append(
            {
                "model": r["variant"],
                f"{PAPER_LABEL}: unshuffled": paper.get("unshuffled", np.nan),
                f"{PAPER_LABEL}: shuffled": paper.get("shuffled", np.nan),
                "paper's settings": PAPER_SETTINGS.get(key, ""),
                "this study: test accuracy": round(100 * r["test"]["accuracy"], 2),
                "this study: 95% CI": ci(r["test"]["ci95"]["accuracy"]),
                "this study's settings": (
                    f"{r['image_size']} px, {r['epochs']} epochs, {r['optimizer']}, "
                    f"weights {r['weights']}, {r['train_minutes']} min"
                ),
            }
        )
    return pd.DataFrame(rows).set_index("model")


def chosen_on_validation(records: list[dict]) -> dict:
    """The run with the best validation accuracy (ties: the first): every selection in the
    study is made this way; test accuracy never chooses."""
    return max(records, key=lambda r: r["val_accuracy"])


def family_conclusion(key: str, records: list[dict]) -> str:
    """A short conclusion (markdown) written from the numbers of this family's runs.

    The variant it describes is the one chosen on validation; the test split only reports."""
    best = chosen_on_validation(records)
    t = best["test"]
    worst_cls = min(t["per_class"], key=lambda c: t["per_class"][c]["recall"])
    confusion = np.array(t["confusion_matrix"])
    np.fill_diagonal(confusion, 0)
    i, j = np.unravel_index(confusion.argmax(), confusion.shape)
    text = (
        f"**{best['variant']}**{' (chosen on validation)' if len(records) > 1 else ''} "
        f"reaches **{pct(t['accuracy'])}** test accuracy "
        f"(95% CI {ci(t['ci95']['accuracy'])}) and macro-F1 {pct(t['macro_f1'])} "
        f"(95% CI {ci(t['ci95']['macro_f1'])}) at {best['image_size']} px after "
        f"{best['epochs']} epoch(s) ({best['train_minutes']} min of training, weights "
        f"{best['weights']}). The weakest class is *{worst_cls}* (recall "
        f"{pct(t['per_class'][worst_cls]['recall'])}); the most frequent confusion is "
        f"*{CLASSES[i]}* taken for *{CLASSES[j]}* ({confusion[i, j]} test images). "
        f"Expected calibration error: {t['ece']:.3f}."
    )
    paper = paper_accuracy(key, best["variant"])
    if paper:
        top = max(paper.values())
        diff = 100 * t["accuracy"] - top
        text += (
            f" The paper prints {top:.2f}% test accuracy for this model (the better of its "
            f"two conditions; see notebook 12's audit for what its notebooks show); this run "
            f"is {abs(diff):.2f} points {'above' if diff >= 0 else 'below'} that, on a "
            "deduplicated test split and at this profile's compute."
        )
    if len(records) > 1:
        ranked = sorted(records, key=lambda r: -r["val_accuracy"])
        a, b = ranked[0], ranked[1]
        gap = 100 * (a["test"]["accuracy"] - b["test"]["accuracy"])
        text += (
            f" Between the variants, {a['variant']} has the better validation accuracy "
            f"({pct(a['val_accuracy'])} against {pct(b['val_accuracy'])} for {b['variant']}); "
            f"on test it is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} it, and "
            f"their 95% CIs {'overlap' if ci_overlap(a, b) else 'do not overlap'}."
        )
    return text


def cv_summary(cv: dict) -> str:
    """One paragraph on a cross-validation, from its numbers."""
    from bloodcells.paper import PRINTED_CV

    paper = PRINTED_CV["cnn"]["test"]
    return (
        f"{len(cv['folds'])}-fold stratified cross-validation ({cv['balance']} inside the "
        f"training folds, {cv['image_size']} px, {cv['epochs']} epoch(s) per fold, the epoch "
        f"chosen on a {100 * cv.get('inner_val', 0):.0f}% inner validation split of the "
        f"training folds, each held-out fold scored once): accuracy "
        f"**{pct(cv['accuracy_mean'])} ± {100 * cv['accuracy_sd']:.2f}** (mean ± sd over folds), "
        f"macro-F1 {pct(cv['macro_f1_mean'])} ± {100 * cv['macro_f1_sd']:.2f}. "
        f"The paper reports {paper:.2f}% for its 5-fold CV with SMOTE at 128x128 "
        f"({PAPER_LABEL})."
    )


def shuffling_verdict(study: dict) -> str:
    """What array order does to Keras's ``validation_split``, from the seeds that were run:
    a side note, not the paper's protocol (its code shuffled in both conditions)."""
    s = study["summary"]
    sorted_runs = [r for r in study["runs"] if r["order"] == "class_sorted"]
    classes_trained = min(r["classes_in_training"] for r in sorted_runs)
    classes_val = max(r["classes_in_validation"] for r in sorted_runs)
    n_seeds = len({r["seed"] for r in study["runs"]})
    verdict = "exceeds" if study["gap_exceeds_2sd"] else "does not exceed"
    return (
        f"With class-sorted arrays, Keras's `validation_split` left only {classes_trained} of "
        f"{len(CLASSES)} classes in training and {classes_val} class(es) in validation. Test "
        f"accuracy over {n_seeds} seed(s): class-sorted **{pct(s['class_sorted']['mean'])} ± "
        f"{100 * s['class_sorted']['sd']:.2f}**, shuffled **{pct(s['shuffled']['mean'])} ± "
        f"{100 * s['shuffled']['sd']:.2f}** ({study['image_size']} px, {study['epochs']} "
        f"epoch(s) each). The gap, {100 * study['gap']:.2f} points, {verdict} twice the larger "
        f"seed-to-seed sd ({100 * study['max_seed_sd']:.2f} points). "
        + (
            "Array order matters a great deal to `validation_split`. "
            if study["gap_exceeds_2sd"]
            else "With these seeds and epochs the two orders cannot be told apart. "
        )
        + 'This does not explain the paper\'s "without / with shuffling" gaps: its notebooks '
        "split with `train_test_split`, which shuffles, in both conditions, so none of its "
        "models trained on class-sorted arrays (notebook 12's audit)."
    )


def ci_overlap(a: dict, b: dict) -> bool:
    """Whether two runs' 95% CIs of test accuracy overlap."""
    x, y = a["test"]["ci95"]["accuracy"], b["test"]["ci95"]["accuracy"]
    return x[0] <= y[1] and y[0] <= x[1]


def hybrid_verdict(hybrid: dict, branches: list[dict]) -> str:
    """Is the hybrid better than each branch alone on the same test split?"""
    parts = []
    for b in branches:
        diff = 100 * (hybrid["test"]["accuracy"] - b["test"]["accuracy"])
        parts.append(
            f"{abs(diff):.2f} points {'above' if diff >= 0 else 'below'} {b['variant']} "
            f"({pct(b['test']['accuracy'])}; 95% CIs "
            f"{'overlap' if ci_overlap(hybrid, b) else 'do not overlap'})"
        )
    return (
        f"On the same test split the hybrid ({pct(hybrid['test']['accuracy'])}) is "
        + " and ".join(parts)
        + f". It was trained {hybrid['joint_epochs']} joint + {hybrid['frozen_epochs']} frozen "
        f"epoch(s) at {hybrid['image_size']} px, "
        f"{'starting from the stage 08/09 branches' if hybrid['from_stages'] else 'from scratch'}."
    )


def supcon_verdict(supcon: dict, control: dict) -> str:
    """SupCon against its cross-entropy control, from their test scores."""
    diff = 100 * (supcon["test"]["accuracy"] - control["test"]["accuracy"])
    return (
        f"With the same encoder ({supcon['encoder']}, {supcon['image_size']} px), SupCon "
        f"pre-training for {supcon['pretrain_epochs']} epoch(s) and a classifier on the frozen "
        f"encoder for {supcon['classifier_epochs']} reach {pct(supcon['test']['accuracy'])}; "
        f"cross-entropy for {control['epochs']} epoch(s) reaches "
        f"{pct(control['test']['accuracy'])}: SupCon is {abs(diff):.2f} points "
        f"{'above' if diff >= 0 else 'below'}, and the 95% CIs "
        f"{'overlap' if ci_overlap(supcon, control) else 'do not overlap'}. Temperature "
        f"{supcon['temperature']}."
    )
