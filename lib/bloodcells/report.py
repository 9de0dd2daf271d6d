"""Tables and sentences for the reports, computed from run records (never typed in)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bloodcells import paper
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


#: the paper's test split: 30% of 17,092 images (seed-code.md)
PAPER_TEST_IMAGES = 5128


def sampling_sd(accuracy: float, n: int = PAPER_TEST_IMAGES) -> float:
    """The sd of the difference between two accuracies of a model at ``accuracy`` on two
    independent test sets of ``n`` images (binomial): test sampling alone."""
    return math.sqrt(2 * accuracy * (1 - accuracy) / n)


def shuffling_gaps(gap: dict) -> list[dict]:
    """Every gap of the paper's Tables 2 and 3 (test, "with" minus "without", points) beside
    this study's split-to-split distribution ``gap`` (:func:`bloodcells.shuffling.summarise`)
    and the settings the paper's run changed at the same time, with a verdict per model.

    The gap judged is the notebooks' own where their outputs show both values (what the code
    did), the printed one otherwise. A gap is "within" when it is no larger than twice the
    measured sd of the paired gaps or the largest gap measured, whichever is wider."""
    band = 100 * max(2 * gap["sd"], abs(gap["min"]), abs(gap["max"]))
    rows = []
    for name, conditions in paper.PRINTED.items():
        printed = conditions["shuffled"][1] - conditions["unshuffled"][1]
        nb = paper.NOTEBOOK_TEST.get(name, {})
        notebook = (
            nb["shuffled"][0] - nb["unshuffled"][0]
            if {"shuffled", "unshuffled"} <= set(nb)
            else None
        )
        judged = notebook if notebook is not None else printed
        kind, confound = paper.SHUFFLED_CHANGED[name]
        mean_acc = np.mean([c[1] for c in conditions.values()]) / 100
        rows.append(
            {
                "model": name,
                "printed gap": round(printed, 2),
                "notebook gap": round(notebook, 2) if notebook is not None else math.nan,
                "within split-to-split spread": abs(judged) <= band,
                "test-sampling sd of a gap": round(100 * sampling_sd(mean_acc), 2),
                "what else changed": confound or ("unknown" if kind is None else "nothing"),
                "verdict": _gap_verdict(printed, notebook, judged, band, kind, confound),
            }
        )
    return rows


def _gap_verdict(
    printed: float,
    notebook: float | None,
    judged: float,
    band: float,
    kind: str | None,
    confound: str,
) -> str:
    source = "its notebooks' outputs" if notebook is not None else "the printed tables"
    head = f"{judged:+.2f} points ({source})"
    if notebook is not None and abs(notebook - printed) >= 0.01:
        head += f"; the printed tables say {printed:+.2f}"
    within = abs(judged) <= band
    if kind == "same split":
        return f"{head}: both conditions used one test split, so only training randomness " + (
            "differs, and the gap is within the spread measured here."
            if within
            else "differs, yet the gap exceeds the spread measured here: unexplained."
        )
    if within:
        tail = "within the split-to-split spread measured here: another random split explains it"
        if confound:
            tail += f" (the run also changed: {confound})"
        elif kind is None:
            tail += " (notebook not readable: other changes unknown)"
        return f"{head}: {tail}."
    if confound:
        return (
            f"{head}: beyond the split-to-split spread, and the run also changed {confound}: "
            "the gap says nothing about shuffling."
        )
    if kind is None:
        return (
            f"{head}: beyond the split-to-split spread; the notebook is not readable, so what "
            "else changed cannot be checked."
        )
    return f"{head}: beyond the split-to-split spread with no other change recorded: unexplained."


def class_sorted_side_note(labels: np.ndarray, validation_split: float = 0.2) -> str:
    """Side note, not the paper's protocol: the classes Keras's ``validation_split`` would
    take from class-sorted arrays, and those training would then never see (computed from
    the labels; nothing is trained)."""
    ordered = np.sort(np.asarray(labels), kind="stable")
    cut = int(math.floor(len(ordered) * (1.0 - validation_split)))
    fit, val = set(ordered[:cut].tolist()), set(ordered[cut:].tolist())
    unseen = [CLASSES[c] for c in sorted(val - fit)]
    return (
        f"Of {len(ordered):,} class-sorted images, `validation_split={validation_split}` "
        f"would validate on {', '.join(CLASSES[c] for c in sorted(val))} and train on "
        f"{len(fit)} of {len(CLASSES)} classes; "
        + (
            f"{', '.join(unseen)} would never be trained on"
            if unseen
            else "every class is trained on"
        )
        + ". Neither of the paper's conditions did this: `train_test_split` mixed the "
        "classes first."
    )


def shuffling_verdict(result: dict) -> str:
    """The study's conclusion in a few sentences, from its numbers."""
    c, g = result["conditions"], result["gap"]
    rows = shuffling_gaps(g)
    within = [r["model"] for r in rows if r["within split-to-split spread"]]
    beyond = [r["model"] for r in rows if not r["within split-to-split spread"]]

    text = (
        f"Run as the paper's code ran it ({result['family']}, {result['image_size']} px, "
        f"{result['epochs']} epoch(s), {g['n']} seeds per condition), test accuracy without "
        f"shuffling is **{pct(c['without']['mean'])} ± {100 * c['without']['sd']:.2f}** and with "
        f"shuffling **{pct(c['with']['mean'])} ± {100 * c['with']['sd']:.2f}** (mean ± sd). The "
        f"paired gap (with − without) is **{100 * g['mean']:+.2f} ± {100 * g['sd']:.2f} points**, "
        f"from {100 * g['min']:+.2f} to {100 * g['max']:+.2f}: the distance between two random "
        f"splits of this dataset (a pre-shuffled split shares {100 * result['test_shared']:.0f}% "
        "of its test images with the unshuffled one). "
    )
    text += (
        f"Of the paper's {len(rows)} gaps, {len(within)} lie within that spread"
        + (f" ({', '.join(within)})" if within else "")
        + f" and {len(beyond)} beyond it"
        + (f" ({', '.join(beyond)})" if beyond else "")
        + "; the table gives each one's verdict. Both conditions train on class-mixed arrays, "
        "so shuffling as such cannot explain any of them."
    )
    return text


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
        + (
            f". It was trained {hybrid['joint_epochs']} joint + {hybrid['frozen_epochs']} frozen "
            if hybrid["joint_epochs"]
            else f". Only its head was trained, {hybrid['frozen_epochs']} "
        )
        + f"epoch(s) at {hybrid['image_size']} px, "
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
