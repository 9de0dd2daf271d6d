"""The input pipeline: batches of uint8 images for training and evaluation, as TensorFlow ops.

The cached arrays are copied into memory once (the largest split the default profile
trains on, 96 px, is 264 MB; 224 px is 1.4 GB) and every batch is cut from them inside
``tf.data`` with a gather: no Python generator, no per-image NumPy work, no memory-map
page faults on the training path. Augmentation (an element of the dihedral group: flips
and 90-degree turns, which leave a single-cell image a valid single-cell image) is three
gathers per batch. Its :data:`VIEWS`: ``random`` draws each image's view afresh every epoch;
``alternating`` gives image *i* view ``(o_i + epoch) mod 8`` from a random offset ``o_i``, so
over any eight consecutive epochs every image is seen in each of its eight views once (the
speed-run "alternating flip", over the whole group). Progressive resizing (``sizes``)
trains the early epochs on smaller copies of the same images, resized in the graph.

The order of the training images and the augmentation of each are functions of
``(seed, epoch)`` alone (stateless random ops), so a run resumed at epoch *k* sees exactly
the batches an uninterrupted run saw from epoch *k* on. The training dataset holds every
remaining epoch's batches and declares its length, so Keras keeps one iterator across
epochs (pass ``steps_per_epoch``) and never runs out of data.
"""

from __future__ import annotations

import numpy as np


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one pass over ``n`` images (the last one may be short)."""
    return -(-n // batch_size)


def dihedral_batch(x, flips):
    """Apply one element of the dihedral group to each square image of ``x``.

    ``flips`` is a (batch, 3) boolean tensor: transpose, then mirror left-right, then
    mirror top-bottom. The 8 combinations are the 8 distinct dihedral transforms, so three
    fair coins give each with probability 1/8.
    """
    import tensorflow as tf

    batch = tf.shape(x)[0]

    def pick(i, transformed, image):
        # a gather from [image; transformed]: 4x faster than a broadcast tf.where on uint8
        take = tf.range(batch) + batch * tf.cast(flips[:, i], tf.int32)
        return tf.gather(tf.concat([image, transformed], 0), take)

    x = pick(0, tf.transpose(x, [0, 2, 1, 3]), x)
    x = pick(1, tf.reverse(x, [2]), x)
    return pick(2, tf.reverse(x, [1]), x)


def epoch_permutation(n: int, seed: int, epoch):
    """The order of ``n`` training images in ``epoch``: a stateless function of both."""
    import tensorflow as tf

    keys = tf.random.stateless_uniform([n], seed=tf.stack([seed, tf.cast(epoch, tf.int32)]))
    return tf.argsort(keys, stable=True)


def epoch_coins(n: int, k: int, seed: int, epoch):
    """(n, k) uniform [0, 1) numbers for ``epoch``, by the image's position in it: the
    augmentation's randomness, from a stream independent of the order's."""
    import tensorflow as tf

    salt = tf.constant(0x5EED, tf.int32)
    return tf.random.stateless_uniform([n, k], seed=tf.stack([seed + salt, epoch]))


#: how the training augmentation picks each image's dihedral view, epoch by epoch
VIEWS = ("random", "alternating")


def alternating_coins(n: int, seed: int, epoch):
    """(n, 3) coins, by image index, that give image ``i`` the dihedral view
    ``(o_i + epoch) mod 8`` (bit ``b`` of the view set means flip ``b`` of
    :func:`dihedral_batch`), where ``o_i`` is uniform in 0..7 and a function of ``seed`` only:
    any eight consecutive epochs show every image in all eight views, once each."""
    import tensorflow as tf

    salt = tf.constant(0xA17, tf.int32)
    offsets = tf.random.stateless_uniform(
        [n], seed=tf.stack([seed + salt, 0]), minval=0, maxval=8, dtype=tf.int32
    )
    view = tf.math.floormod(offsets + tf.cast(epoch, tf.int32), 8)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(view[:, None], tf.range(3)), 1)
    return tf.cast(1 - bits, tf.float32)  # a coin below 0.5 flips


def jitter_batch(x, coins, strength: float = 0.2):
    """Random contrast and brightness per uint8 image; ``coins`` is (batch, 2) in [0, 1)."""
    import tensorflow as tf

    f = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(f, axis=[1, 2, 3], keepdims=True)
    contrast = (1 - strength + 2 * strength * coins[:, 0])[:, None, None, None]
    brightness = ((2 * coins[:, 1] - 1) * strength * 127.5)[:, None, None, None]
    return tf.cast(tf.clip_by_value((f - mean) * contrast + mean + brightness, 0, 255), tf.uint8)


def progressive_sizes(start: int, full: int, epochs: int, step: int = 8) -> list[int]:
    """The image size of each epoch under progressive resizing: from ``start`` px in the
    first epoch up to ``full`` in the last, linearly, rounded down to a multiple of
    ``step`` (never below ``start``); ``start`` 0 (off) or one epoch: ``full`` throughout."""
    if not start or epochs == 1:
        return [full] * epochs
    sizes = [start + (full - start) * e / (epochs - 1) for e in range(epochs)]
    return [max(start, int(s) // step * step) for s in sizes[:-1]] + [full]


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    epochs: int,
    first_epoch: int = 0,
    coins: int = 3,
    drop_remainder: bool = False,
    views: str = "random",
    with_epoch: bool = False,
):
    """``tf.data`` of (image indices, coins) per batch for epochs ``first_epoch .. epochs-1``,
    each epoch a fresh stateless permutation, with its length declared. ``views``
    (:data:`VIEWS`): ``alternating`` gives each image's three coins by
    :func:`alternating_coins` instead of fresh ones. ``with_epoch``: a third element, the
    epoch of each image (progressive resizing's clock)."""
    import tensorflow as tf

    if views not in VIEWS:
        raise ValueError(f"views must be one of {', '.join(VIEWS)}; got {views!r}.")
    if views == "alternating" and coins != 3:
        raise ValueError("alternating views take the dihedral group's 3 coins per image.")

    def one_epoch(epoch):
        epoch = tf.cast(epoch, tf.int32)
        order = epoch_permutation(n, seed, epoch)
        if views == "alternating":  # the coins follow the image, not its position
            picked = tf.gather(alternating_coins(n, seed, epoch), order)
        else:
            picked = epoch_coins(n, coins, seed, epoch)
        slices = (order, picked, tf.fill([n], epoch)) if with_epoch else (order, picked)
        return tf.data.Dataset.from_tensor_slices(slices).batch(batch_size, drop_remainder)

    last = max(epochs, first_epoch + 1)
    per_epoch = n // batch_size if drop_remainder else steps_per_epoch(n, batch_size)
    if per_epoch < 1:
        raise ValueError(f"{n} images make no full batch of {batch_size}.")
    ds = tf.data.Dataset.range(first_epoch, last).flat_map(one_epoch)
    # flat_map hides the length; declared, Keras knows every epoch's steps
    return ds.apply(tf.data.experimental.assert_cardinality((last - first_epoch) * per_epoch))


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool,
    augment: bool = False,
    seed: int = 0,
    n_classes: int = 8,
    epochs: int = 1,
    first_epoch: int = 0,
    views: str = "random",
    sizes: list[int] | None = None,
):
    """``tf.data`` batches of (uint8 images, one-hot float32 labels) from in-memory arrays.

    With ``shuffle`` the dataset holds epochs ``first_epoch .. epochs - 1`` back to back,
    each a fresh permutation (and, when ``augment``, each image in a dihedral view picked
    as ``views`` says: :data:`VIEWS`); pass
    ``steps_per_epoch(len(x), batch_size)`` to ``fit``. Without it, one pass in order
    (validation, test, benchmarks). Labels come out one-hot, which label smoothing needs.
    ``sizes`` (progressive resizing; one per epoch, :func:`progressive_sizes`): each
    training epoch's images resized to its size (bilinear, antialiased, back to uint8),
    so the batches' height and width vary by epoch.
    """
    import tensorflow as tf

    n = len(x)
    if n == 0:
        raise ValueError("make_dataset: no images (an empty split?).")
    images = tf.constant(np.asarray(x))  # one copy in memory; the memmap is read once
    labels = tf.one_hot(tf.constant(np.asarray(y), tf.int32), n_classes)

    if not shuffle:

        def in_order(step):
            start = tf.cast(step, tf.int32) * batch_size
            stop = tf.minimum(start + batch_size, n)
            return images[start:stop], labels[start:stop]

        return tf.data.Dataset.range(steps_per_epoch(n, batch_size)).map(in_order).prefetch(2)

    epoch_sizes = None if sizes is None else tf.constant(sizes, tf.int32)

    def gather(idx, coins, epoch=None):
        xb = tf.gather(images, idx)
        xb = dihedral_batch(xb, coins < 0.5) if augment else xb
        if epoch is not None:  # this epoch's size (the batch is one epoch's: same for all)
            size = tf.gather(epoch_sizes, epoch[0])
            resized = tf.image.resize(xb, tf.stack([size, size]), antialias=True)
            xb = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
        return xb, tf.gather(labels, idx)

    if sizes is not None and len(sizes) < max(epochs, first_epoch + 1):
        raise ValueError(f"sizes needs one size per epoch ({epochs}); got {len(sizes)}.")
    ds = epoch_batches(
        n, batch_size, seed, epochs, first_epoch, views=views, with_epoch=sizes is not None
    )
    return ds.map(gather, num_parallel_calls=2).prefetch(2)


def two_view_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    epochs: int = 1,
    first_epoch: int = 0,
    full_batches: bool = True,
):
    """SupCon's batches: 2B images, two independent augmentations (dihedral + contrast and
    brightness) of B images, interleaved (rows 2k and 2k+1 are image k's views), and their
    integer labels. Training takes full batches only
    (``full_batches``); validation keeps the short last one, so a split smaller than one
    batch is still scored."""
    import tensorflow as tf

    images = tf.constant(np.asarray(x))
    labels = tf.constant(np.asarray(y), tf.int64)

    def views(idx, coins):
        xb = tf.gather(images, idx)
        one = jitter_batch(dihedral_batch(xb, coins[:, 0:3] < 0.5), coins[:, 3:5])
        two = jitter_batch(dihedral_batch(xb, coins[:, 5:8] < 0.5), coins[:, 8:10])
        yb = tf.gather(labels, idx)
        # interleaved (image 0 view 1, image 0 view 2, image 1 view 1, ...): a mirrored
        # strategy splits a batch into contiguous shares, so each replica gets both views
        # of its images, the positive pairs the loss contrasts
        pairs = tf.reshape(tf.stack([one, two], 1), tf.concat([[-1], tf.shape(xb)[1:]], 0))
        return pairs, tf.repeat(yb, 2)

    ds = epoch_batches(len(x), batch_size, seed, epochs, first_epoch, 10, full_batches)
    return ds.map(views, num_parallel_calls=2).prefetch(2)
