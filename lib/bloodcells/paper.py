"""The numbers the paper reports (FICC 2025), quoted for comparison and labelled as such.

Test accuracy in percent, "without shuffling" / "with shuffling", as listed in the study
design (``shared/docs/design.md``). Nothing here is a result of this study.
"""

from __future__ import annotations

PAPER_LABEL = "paper (reported, FICC 2025)"

PAPER_TEST_ACCURACY: dict[str, dict[str, float]] = {
    "cnn": {"unshuffled": 86.6, "shuffled": 91.08, "cv_smote_128px": 94.10},
    "unet": {"unshuffled": 94.04, "shuffled": 94.66},
    "resnet50_sgd": {"unshuffled": 90.76, "shuffled": 89.88},
    "resnet50_rmsprop": {"unshuffled": 89.22, "shuffled": 92.40},
    "vgg16": {"unshuffled": 80.36, "shuffled": 79.37},
    "densenet201": {"unshuffled": 90.17, "shuffled": 87.09},
    "mobilenetv2": {"unshuffled": 85.39, "shuffled": 85.61},
    "inceptionv3": {"unshuffled": 89.84, "shuffled": 91.71},
    "xception": {"unshuffled": 89.84, "shuffled": 97.89},
    "hybrid": {"unshuffled": 98.57, "shuffled": 98.51},
    "supcon": {"unshuffled": 97.33, "shuffled": 96.35},
}

PAPER_SETTINGS: dict[str, str] = {
    "cnn": "sequential CNN, batch 32, 10 epochs",
    "unet": "U-Net classifier, 128x128",
    "resnet50": "ImageNet base + GAP + dense head, 20 epochs, batch 32",
    "vgg16": "ImageNet VGG-16",
    "densenet201": "Adam, sparse CE, batch 32, 20 epochs",
    "mobilenetv2": "partially frozen ImageNet base, SMOTE, augmentation, 30 epochs",
    "inceptionv3": "GAP, Dense 1024, Dropout 0.5; Adam 1e-3, 10 epochs, batch 32",
    "xception": "GAP, Dense 1024, Dropout 0.5; Adam 1e-3, 10 epochs, batch 32",
}


def paper_accuracy(key: str, variant: str | None = None) -> dict[str, float]:
    """The paper's test accuracies for a family (or family_variant); empty if none."""
    return PAPER_TEST_ACCURACY.get(f"{key}_{variant}", PAPER_TEST_ACCURACY.get(key, {}))
