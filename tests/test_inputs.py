"""The input pipeline on the sample's real 32 px images: order, augmentation, resume, length."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from bloodcells import experiment, inputs
from tests.conftest import mini_project


@pytest.fixture(scope="module")
def train_split(tmp_path_factory, built, sample_dir):
    root = mini_project(tmp_path_factory.mktemp("inputs"), built[0], sample_dir)
    x, y = experiment.load_splits(32, root)["train"]
    return np.asarray(x), np.asarray(y)


def numpy_dihedral(img: np.ndarray, transpose: bool, mirror: bool, flip: bool) -> np.ndarray:
    img = img.transpose(1, 0, 2) if transpose else img
    img = img[:, ::-1] if mirror else img
    return img[::-1] if flip else img


def fingerprint(img: np.ndarray) -> bytes:
    """The same for every dihedral view of an image: its pixel values, sorted."""
    return np.sort(img, axis=None).tobytes()


def batches(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(xb), np.asarray(yb)) for xb, yb in ds]


def test_dihedral_batch_gives_the_eight_distinct_transforms(train_split):
    import tensorflow as tf

    img = train_split[0][0]
    coins = np.array([[(v >> b) & 1 for b in range(3)] for v in range(8)], dtype=bool)
    out = np.asarray(inputs.dihedral_batch(tf.constant(np.stack([img] * 8)), tf.constant(coins)))
    for view, flags in enumerate(coins):
        np.testing.assert_array_equal(out[view], numpy_dihedral(img, *flags))
    assert len({o.tobytes() for o in out}) == 8  # a real cell image has no symmetry


def test_each_epoch_is_a_fresh_permutation_of_every_image(train_split):
    x, y = train_split
    ds = inputs.make_dataset(x, y, 32, shuffle=True, augment=True, seed=7, epochs=2)
    steps = inputs.steps_per_epoch(len(x), 32)
    assert int(ds.cardinality()) == 2 * steps
    got = batches(ds)
    assert [len(b[0]) for b in got[:steps]] == [32] * (steps - 1) + [len(x) - 32 * (steps - 1)]
    expected = sorted(fingerprint(img) for img in x)
    orders = []
    for epoch in (got[:steps], got[steps:]):
        images = np.concatenate([b[0] for b in epoch])
        labels = np.concatenate([b[1] for b in epoch]).argmax(1)
        assert sorted(fingerprint(img) for img in images) == expected  # augmentation moves pixels
        # every image once, with its own label
        by_print = {fingerprint(img): label for img, label in zip(x, y, strict=True)}
        assert [by_print[fingerprint(img)] for img in images] == list(labels)
        orders.append([fingerprint(img) for img in images])
        assert not np.array_equal(images, x)  # shuffled and augmented
    assert orders[0] != orders[1]


def test_same_seed_same_batches_other_seed_others(train_split):
    x, y = train_split
    one = batches(inputs.make_dataset(x, y, 16, True, True, seed=3))
    two = batches(inputs.make_dataset(x, y, 16, True, True, seed=3))
    other = batches(inputs.make_dataset(x, y, 16, True, True, seed=4))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(one, two, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(one, other, strict=True))


def test_a_resumed_dataset_continues_with_the_same_batches(train_split):
    x, y = train_split
    whole = batches(inputs.make_dataset(x, y, 16, True, True, seed=5, epochs=3))
    resumed = batches(inputs.make_dataset(x, y, 16, True, True, seed=5, epochs=3, first_epoch=1))
    steps = inputs.steps_per_epoch(len(x), 16)
    assert len(resumed) == 2 * steps
    for a, b in zip(whole[steps:], resumed, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def view_of(original: np.ndarray, seen: np.ndarray) -> int:
    """Which of the 8 dihedral views of ``original`` ``seen`` is (bit b: flip b)."""
    for view in range(8):
        if np.array_equal(numpy_dihedral(original, *((view >> b) & 1 for b in range(3))), seen):
            return view
    raise AssertionError("not a dihedral view of the image")


def views_by_image(x: np.ndarray, ds, steps: int) -> list[list[int]]:
    """Per epoch, the view each image of ``x`` was shown in (the sample's cells are distinct
    and have no symmetry, so the pixels name the image and the view)."""
    index = {fingerprint(img): i for i, img in enumerate(x)}
    assert len(index) == len(x)
    got, out = batches(ds), []
    for start in range(0, len(got), steps):
        seen = [None] * len(x)
        for xb, _ in got[start : start + steps]:
            for img in xb:
                i = index[fingerprint(img)]
                seen[i] = view_of(x[i], img)
        out.append(seen)
    return out


def test_alternating_views_show_every_image_in_all_eight_views_over_eight_epochs(train_split):
    x, y = train_split
    steps = inputs.steps_per_epoch(len(x), 16)

    def shown(views: str, seed: int = 2, epochs: int = 8, first_epoch: int = 0):
        ds = inputs.make_dataset(x, y, 16, True, True, seed, 8, epochs, first_epoch, views)
        return views_by_image(x, ds, steps)

    alternating = shown("alternating")
    for image in zip(*alternating, strict=True):
        assert sorted(image) == list(range(8))  # each view once
        assert all((b - a) % 8 == 1 for a, b in zip(image, image[1:], strict=False))
    assert len(set(alternating[0])) > 4  # each image its own offset
    # resumed at epoch 5, the same views; another seed, other offsets
    assert shown("alternating", first_epoch=5) == alternating[5:]
    assert shown("alternating", seed=3, epochs=1) != alternating[:1]
    # random views (the default) repeat views within eight epochs for most images
    fresh = shown("random")
    repeats = sum(len(set(image)) < 8 for image in zip(*fresh, strict=True))
    assert repeats > len(x) // 2
    default = views_by_image(x, inputs.make_dataset(x, y, 16, True, True, 2, 8, 8), steps)
    assert default == fresh
    with pytest.raises(ValueError, match="views must be one of random, alternating; got 'x'"):
        inputs.make_dataset(x, y, 16, True, True, 2, views="x")


def test_evaluation_batches_are_in_order_and_complete(train_split):
    x, y = train_split
    got = batches(inputs.make_dataset(x, y, 32, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]).argmax(1), y)


def test_fit_never_runs_out_of_data(train_split):
    x, y = train_split
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten()]
    )
    model.add(keras.layers.Dense(8, activation="softmax"))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    ds = inputs.make_dataset(x, y, 16, True, True, seed=1, epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            ds, epochs=3, steps_per_epoch=inputs.steps_per_epoch(len(x), 16), verbose=0
        )
    assert len(history.history["loss"]) == 3
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_two_views_are_two_augmentations_of_the_same_images(train_split):
    x, y = train_split
    ds = inputs.two_view_dataset(x, y, 8, seed=2, epochs=1)
    got = batches(ds)
    assert len(got) == len(x) // 8  # full batches only
    xb, yb = got[0]
    assert xb.shape == (16, 32, 32, 3) and xb.dtype == np.uint8
    np.testing.assert_array_equal(yb[0::2], yb[1::2])  # rows 2k, 2k+1: image k's two views
    assert not np.array_equal(xb[0::2], xb[1::2])  # two independent views
    labels = np.concatenate([b[1][0::2] for b in got])  # each image at most once per epoch
    assert (np.bincount(labels, minlength=8) <= np.bincount(y, minlength=8)).all()
    # both views of an image sit side by side, so a mirrored strategy's contiguous shares
    # hold whole pairs. Four checkerboards of amplitude 10, 16, 25.6, 41: a flip or turn
    # keeps the spread, contrast scales it by 0.8-1.2 (less than the 1.6 between images),
    # brightness shifts it, so the views' spreads rank the images the same way
    board = (np.indices((32, 32)).sum(0) % 2 * 2 - 1)[None, :, :, None]
    amp = 10 * 1.6 ** np.arange(4)
    boards = np.repeat(128 + amp[:, None, None, None] * board, 3, 3).astype(np.uint8)
    (xf, yf), *_ = batches(inputs.two_view_dataset(boards, np.arange(4), 4, seed=3))
    spread = xf.reshape(8, -1).astype(float).std(axis=1)
    np.testing.assert_array_equal(np.argsort(spread[0::2]), np.argsort(spread[1::2]))
    np.testing.assert_array_equal(np.argsort(spread[0::2]), np.argsort(yf[0::2]))


def test_a_split_smaller_than_a_batch_still_gives_validation_views(train_split):
    x, y = train_split[0][:15], train_split[1][:15]
    with pytest.raises(ValueError, match="15 images make no full batch of 16"):
        inputs.two_view_dataset(x, y, 16, seed=1)
    (xb, yb), *rest = batches(inputs.two_view_dataset(x, y, 16, seed=1, full_batches=False))
    assert not rest and xb.shape[0] == 30 and sorted(yb[0::2]) == sorted(y)


@pytest.mark.parametrize(
    ("start", "full", "epochs", "expected"),
    [
        (64, 96, 4, [64, 72, 80, 96]),
        (64, 96, 24, None),
        (16, 32, 2, [16, 32]),
        (64, 96, 1, [96]),
        (0, 96, 3, [96, 96, 96]),
    ],
)
def test_progressive_sizes_grow_from_the_start_to_the_full_size(start, full, epochs, expected):
    sizes = inputs.progressive_sizes(start, full, epochs)
    assert len(sizes) == epochs and sizes[-1] == full
    assert sizes == sorted(sizes) and all(s % 8 == 0 for s in sizes[:-1])
    assert sizes[0] == (start if start and epochs > 1 else full)
    if expected is not None:
        assert sizes == expected


def test_progressive_resizing_shrinks_the_same_batches_epoch_by_epoch(train_split):
    """With ``sizes`` each epoch's batches are that epoch's batches without it (same order,
    same views), resized to its size; a resumed dataset resizes as the whole one did."""
    import tensorflow as tf

    x, y = train_split
    sizes = [16, 24, 32]
    steps = inputs.steps_per_epoch(len(x), 16)
    plain = batches(inputs.make_dataset(x, y, 16, True, True, seed=5, epochs=3))
    grown = batches(inputs.make_dataset(x, y, 16, True, True, seed=5, epochs=3, sizes=sizes))
    assert len(grown) == len(plain) == 3 * steps
    for i, ((xa, ya), (xb, yb)) in enumerate(zip(plain, grown, strict=True)):
        size = sizes[i // steps]
        assert xb.shape[1:] == (size, size, 3) and xb.dtype == np.uint8
        expected = tf.image.resize(xa, (size, size), antialias=True).numpy()
        np.testing.assert_array_equal(xb, np.clip(np.round(expected), 0, 255).astype(np.uint8))
        np.testing.assert_array_equal(ya, yb)
    resumed = batches(
        inputs.make_dataset(x, y, 16, True, True, seed=5, epochs=3, first_epoch=1, sizes=sizes)
    )
    for a, b in zip(grown[steps:], resumed, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="one size per epoch"):
        inputs.make_dataset(x, y, 16, True, epochs=3, sizes=[16, 32])
