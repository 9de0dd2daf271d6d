"""The numbers the paper reports (FICC 2025), and what its own notebooks show.

Percent. ``PRINTED``: the paper's Tables 2 ("without shuffling") and 3 ("with shuffling"),
train and test accuracy, as printed. ``NOTEBOOK_TEST``: the test accuracy that the original
notebooks' saved outputs show, where they could be read (``shared/docs/seed-code.md``; the
notebook with the CNN, MobileNet-V2 and SupCon could not). ``PROTOCOL_NOTES``: what the
notebooks did that a reader of the tables needs to know. Nothing here is a result of this
study; every value is labelled with its source where it is shown.
"""

from __future__ import annotations

import math

PAPER_LABEL = "paper (reported, FICC 2025)"
NOTEBOOK_LABEL = "paper's notebooks (saved outputs)"

CONDITIONS = ("unshuffled", "shuffled")

#: Tables 2 and 3 as printed: (train, test) per condition
PRINTED: dict[str, dict[str, tuple[float, float]]] = {
    "cnn": {"unshuffled": (97.15, 86.60), "shuffled": (95.76, 91.08)},
    "unet": {"unshuffled": (96.88, 94.04), "shuffled": (96.88, 94.66)},
    "resnet50_sgd": {"unshuffled": (92.01, 90.76), "shuffled": (92.81, 89.88)},
    "resnet50_rmsprop": {"unshuffled": (96.78, 89.22), "shuffled": (96.57, 92.40)},
    "densenet201": {"unshuffled": (93.77, 90.17), "shuffled": (89.81, 87.09)},
    "vgg16": {"unshuffled": (82.10, 80.36), "shuffled": (81.32, 79.36)},
    "supcon": {"unshuffled": (98.46, 97.33), "shuffled": (98.39, 96.35)},
    "mobilenetv2": {"unshuffled": (89.13, 85.39), "shuffled": (90.54, 85.61)},
    "inceptionv3": {"unshuffled": (97.93, 89.84), "shuffled": (98.17, 91.71)},
    "xception": {"unshuffled": (99.05, 89.84), "shuffled": (99.34, 97.89)},
    "hybrid": {"unshuffled": (99.89, 98.57), "shuffled": (99.75, 98.51)},
}

#: Table 1: the CNN's 5-fold cross-validation with SMOTE at 128 px (a CV mean over folds
#: of the training part, not a test accuracy)
PRINTED_CV = {"cnn": {"train": 98.11, "test": 94.10, "macro_f1": 94.10}}

#: where the paper's text gives another value than its tables
PRINTED_TEXT = {
    ("densenet201", "shuffled"): 87.73,
    ("resnet50_rmsprop", "shuffled"): 92.39,
    ("vgg16", "shuffled"): 79.37,
    ("mobilenetv2", "unshuffled"): 81.45,
}

#: test accuracy in the notebooks' saved outputs, with what the output is
NOTEBOOK_TEST: dict[str, dict[str, tuple[float, str]]] = {
    "unet": {
        "unshuffled": (94.66, "evaluate() of the no-shuffle cell: the paper swapped the two"),
        "shuffled": (94.04, "evaluate() after train_df.sample(frac=1)"),
    },
    "resnet50_sgd": {
        "unshuffled": (90.76, "evaluate(X_test)"),
        "shuffled": (89.88, "evaluate(X_test)"),
    },
    "resnet50_rmsprop": {
        "unshuffled": (89.22, "evaluate(X_test)"),
        "shuffled": (92.39, "evaluate(X_test)"),
    },
    "densenet201": {
        "unshuffled": (90.41, "evaluate() returned 0.9041; 90.17 is its progress bar"),
        "shuffled": (88.46, "progress bar (an edited cell shows 88.67); 87.09 appears nowhere"),
    },
    "vgg16": {
        "unshuffled": (80.36, "evaluate() (0.80363)"),
        "shuffled": (79.37, "evaluate() (0.79368); the table truncates to 79.36"),
    },
    "inceptionv3": {
        "unshuffled": (89.84, "argmax of predict()"),
        "shuffled": (91.71, "argmax of predict()"),
    },
    "xception": {
        "unshuffled": (97.17, "argmax of predict(); the paper prints InceptionV3's 89.84"),
        "shuffled": (97.89, "argmax of predict()"),
    },
    "hybrid": {
        "unshuffled": (98.58, "argmax of predict() (0.98576); the table truncates to 98.57"),
        "shuffled": (98.52, "argmax of predict() (0.98518); the table truncates to 98.51"),
    },
}

NOT_READABLE = "notebook not readable: known from the paper only"

#: per family, the protocol facts that change what its numbers mean
PROTOCOL_NOTES: dict[str, str] = {
    "cnn": f"{NOT_READABLE}; Table 1's 94.10% is a CV mean, not a test accuracy",
    "unet": (
        "not a U-Net (3 conv blocks, no decoder or skips); 80/20 unstratified split (another "
        "test set than the others); the test generator is the validation data; 128 px"
    ),
    "resnet50": (
        "frozen ImageNet base fed raw 0-255 BGR pixels (no preprocess_input); 'shuffled' = "
        "an unseeded pre-shuffle before the split, i.e. another test set"
    ),
    "vgg16": (
        "the test split is the validation data; each run has its own unseeded split; frozen "
        "ImageNet base fed raw 0-255 pixels; only flow(shuffle=) differs between conditions"
    ),
    "densenet201": (
        "raw 0-255 BGR pixels; the 'shuffled' run also changed head (no BatchNorm), loss, "
        "batch size (64) and dropped EarlyStopping/ReduceLROnPlateau"
    ),
    "mobilenetv2": f"{NOT_READABLE}; text says 81.45 where Table 2 says 85.39",
    "inceptionv3": (
        "ImageNet base fed raw 0-255 BGR pixels, nothing frozen; 'shuffled' = an unseeded "
        "pre-shuffle, i.e. another test set"
    ),
    "xception": (
        "as InceptionV3; the paper's unshuffled 89.84 is InceptionV3's value (the notebook "
        "shows 97.17)"
    ),
    "hybrid": (
        "'shuffled' run froze both branches and trained the head 5 epochs (unshuffled: 10 "
        "epochs, nothing frozen), on another unseeded test split"
    ),
    "supcon": f"{NOT_READABLE}; ResNet50V2 encoder per the paper",
}

#: per model of Tables 2/3: what its "with shuffling" run changed besides the pre-shuffle
#: (``split``: another test split; ``same split``: the same one; ``None``: not known), and
#: the other settings it changed at the same time (seed-code.md)
SHUFFLED_CHANGED: dict[str, tuple[str | None, str]] = {
    "cnn": (None, ""),
    "unet": ("same split", ""),  # one 80/20 split; both generators shuffle anyway
    "resnet50_sgd": ("split", ""),
    "resnet50_rmsprop": ("split", ""),
    "densenet201": (
        "split",
        "head without BatchNorm, sparse cross-entropy, batch 64, no EarlyStopping or "
        "ReduceLROnPlateau",
    ),
    "vgg16": ("split", ""),  # flow(shuffle=) only reorders already-mixed batches
    "supcon": (None, ""),
    "mobilenetv2": (None, ""),
    "inceptionv3": ("split", ""),
    "xception": ("split", ""),
    "hybrid": ("split", "both branches frozen, head trained 5 epochs (unshuffled: 10, unfrozen)"),
}

#: every notebook: no seeds anywhere, one run per condition
COMMON_NOTES = (
    "No seed calls in any notebook and one run per condition; both conditions train on "
    "class-mixed arrays (train_test_split shuffles by default), so no condition ever "
    "trained on class-sorted data."
)

PAPER_SETTINGS: dict[str, str] = {
    "cnn": "sequential CNN, batch 32, 10 epochs",
    "unet": "plain CNN called U-Net, 128x128, Adam 1e-4, 30 epochs",
    "resnet50": "frozen ImageNet base + GAP + Dense 512, 20 epochs, batch 32",
    "vgg16": "frozen ImageNet VGG-16 + GAP + Dense 128, augmentation, 20 epochs",
    "densenet201": "frozen ImageNet base + Dense 512 (+BN), Adam, 20 epochs",
    "mobilenetv2": "partially frozen ImageNet base, SMOTE, augmentation, 30 epochs",
    "inceptionv3": "GAP, Dense 1024, Dropout 0.5; Adam 1e-3, 10 epochs, batch 32",
    "xception": "GAP, Dense 1024, Dropout 0.5; Adam 1e-3, 10 epochs, batch 32",
}

#: the paper's printed test accuracy per condition (kept for the reports' tables)
PAPER_TEST_ACCURACY: dict[str, dict[str, float]] = {
    name: {c: test for c, (_, test) in conditions.items()} for name, conditions in PRINTED.items()
}


def paper_name(key: str, variant: str | None = None) -> str | None:
    """The paper's model that a run of family ``key`` corresponds to, or None.

    A family's own variant (``cnn``, ``resnet50_sgd``) is the paper's model; a variant the
    paper did not run (SupCon's cross-entropy control) has no paper number beside it."""
    variant = variant or key
    if variant in PRINTED:
        return variant
    return key if variant == key and key in PRINTED else None


def paper_accuracy(key: str, variant: str | None = None) -> dict[str, float]:
    """The paper's printed test accuracies (``unshuffled``/``shuffled``) for the model a run
    corresponds to; empty when the paper ran no such model. Test accuracies only: the
    cross-validation mean of Table 1 is in :data:`PRINTED_CV`."""
    name = paper_name(key, variant)
    return dict(PAPER_TEST_ACCURACY[name]) if name else {}


def audit_rows() -> list[dict]:
    """The paper against its notebooks: per model and condition, the printed test accuracy,
    the notebook's, and the protocol notes that matter (notes on a family's first row)."""
    rows = []
    for name in PRINTED:
        family = name.split("_")[0]
        for condition in CONDITIONS:
            printed = PRINTED[name][condition][1]
            notebook, what = NOTEBOOK_TEST.get(name, {}).get(condition, (math.nan, ""))
            text = PRINTED_TEXT.get((name, condition))
            differs = not math.isnan(notebook) and abs(notebook - printed) >= 0.01
            rows.append(
                {
                    "model": name,
                    "condition": condition,
                    "printed (table)": printed,
                    "printed (text)": text if text is not None else math.nan,
                    "notebook": notebook,
                    "differs": "yes" if differs else ("" if what else "unknown"),
                    "notebook output": what or NOT_READABLE,
                    "protocol notes": PROTOCOL_NOTES[family] if condition == "unshuffled" else "",
                }
            )
    return rows
