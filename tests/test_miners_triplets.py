"""Tests of keras_featreg.mining against explicit Python loops."""

import numpy as np
import pytest

import keras
from keras import ops

from keras_featreg.miners import _triplets as mining
from keras_featreg.ops import labels as labels_ops
from keras_featreg.ops import masked
from keras_featreg.losses import _npair
from _helpers import value_and_grad as _value_and_grad


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _random_distances(rng, b):
    points = rng.normal(size=(b, 3))
    return np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).astype("float32")


LABEL_SETS = {
    "pxl": np.array([3, 1, 3, 2, 1, 2, 3, 1, 2]),
    "singletons": np.array([0, 0, 1, 2, 2, 2, 3, 4]),
    "one_class": np.array([5, 5, 5, 5]),
    "all_distinct": np.array([0, 1, 2, 3, 4]),
    "one_sample": np.array([7]),
}


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_pair_and_triplet_masks_match_loops(name):
    labels = LABEL_SETS[name]
    b = len(labels)
    positive, negative = (_np(m) for m in labels_ops.pair_masks(labels))
    triplets = _np(labels_ops.triplet_mask(labels))
    for i in range(b):
        for j in range(b):
            assert positive[i, j] == (i != j and labels[i] == labels[j])
            assert negative[i, j] == (labels[i] != labels[j])
            for k in range(b):
                assert triplets[i, j, k] == (
                    i != j and labels[i] == labels[j] and labels[i] != labels[k]
                )


def test_labels_column_vector_is_accepted_and_matrix_rejected():
    labels = np.array([0, 0, 1])
    pos_a, _ = labels_ops.pair_masks(labels)
    pos_b, _ = labels_ops.pair_masks(labels[:, None])
    np.testing.assert_array_equal(_np(pos_a), _np(pos_b))
    with pytest.raises(ValueError, match=r"y_true.shape=\(3, 2\)"):
        labels_ops.check_labels(np.zeros((3, 2)))


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_batch_hard_matches_loops(name):
    labels = LABEL_SETS[name]
    b = len(labels)
    d = _random_distances(np.random.default_rng(0), b)
    mined = mining.batch_hard(d, labels)
    hp, hn, mask = (_np(t) for t in mined[:3])
    assert mined.average_over_active is False
    for a in range(b):
        pos = [d[a, p] for p in range(b) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(b) if labels[n] != labels[a]]
        assert mask[a] == bool(pos and neg)
        if pos and neg:
            assert hp[a] == pytest.approx(max(pos))
            assert hn[a] == pytest.approx(min(neg))
        assert np.isfinite(hp[a]) and np.isfinite(hn[a])


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_semi_hard_matches_loops(name, seed):
    labels = LABEL_SETS[name]
    b = len(labels)
    d = _random_distances(np.random.default_rng(seed), b)
    mined = mining.batch_semi_hard(d, labels)
    ap, an, mask = (_np(t) for t in mined[:3])
    for a in range(b):
        neg = [d[a, n] for n in range(b) if labels[n] != labels[a]]
        for p in range(b):
            valid = p != a and labels[p] == labels[a] and bool(neg)
            assert mask[a, p] == valid
            if not valid:
                continue
            farther = [v for v in neg if v > d[a, p]]
            expected = min(farther) if farther else max(neg)
            assert ap[a, p] == pytest.approx(d[a, p])
            assert an[a, p] == pytest.approx(expected)
    assert np.all(np.isfinite(an))


def test_semi_hard_fallback_and_strict_inequality_by_hand():
    # 1-D points: class 0 at 0 and 2, class 1 at 2.5 and 5.
    x = np.array([0.0, 2.0, 2.5, 5.0])
    d = np.abs(x[:, None] - x[None]).astype("float32")
    mined = mining.batch_semi_hard(d, np.array([0, 0, 1, 1]))
    an = _np(mined.negative_distances)
    assert an[0, 1] == pytest.approx(2.5)  # negatives 2.5, 5 > 2: closest 2.5
    assert an[1, 0] == pytest.approx(3.0)  # negatives 0.5, 3 > 2: 3
    assert an[2, 3] == pytest.approx(2.5)  # negatives 2.5 (not > 2.5), 0.5: fallback max 2.5
    assert an[3, 2] == pytest.approx(3.0)  # negatives 5, 3 > 2.5: 3


def test_batch_all_matches_loops():
    labels = LABEL_SETS["singletons"]
    b = len(labels)
    d = _random_distances(np.random.default_rng(2), b)
    mined = mining.batch_all(d, labels)
    assert mined.average_over_active is True
    diff = _np(mined.positive_distances - mined.negative_distances)
    mask = _np(mined.mask)
    assert diff.shape == mask.shape == (b, b, b)
    for a in range(b):
        for p in range(b):
            for n in range(b):
                if mask[a, p, n]:
                    assert diff[a, p, n] == pytest.approx(d[a, p] - d[a, n], abs=1e-6)


def test_get_miner():
    from keras_featreg import miners

    assert isinstance(miners.get("hard"), miners.BatchHardMiner)
    assert isinstance(miners.get("semi_hard"), miners.SemiHardMiner)
    assert isinstance(miners.get("semi-hard"), miners.SemiHardMiner)  # earlier spelling
    assert isinstance(miners.get("all"), miners.BatchAllMiner)
    assert miners.get(mining.batch_semi_hard) == miners.SemiHardMiner()
    with pytest.raises(ValueError, match="miner='semihard'"):
        miners.get("semihard")


def test_masked_reductions_values_and_empty_rows():
    x = np.array([[3.0, -1.0, 2.0], [1.0, 5.0, 4.0], [7.0, 8.0, 9.0]], "float32")
    mask = np.array([[True, False, True], [False, True, True], [False, False, False]])
    mins, has = masked.masked_min(x, mask, axis=1)
    maxs, _ = masked.masked_max(x, mask, axis=1)
    np.testing.assert_allclose(_np(mins), [2.0, 4.0, 0.0])
    np.testing.assert_allclose(_np(maxs), [3.0, 5.0, 0.0])
    np.testing.assert_array_equal(_np(has), [True, True, False])
    lse = _np(masked.masked_logsumexp(x, mask, axis=1))
    np.testing.assert_allclose(lse, [np.log(np.exp(3) + np.exp(2)), np.log(np.exp(5) + np.exp(4)), 0.0], rtol=1e-6)
    lse0 = _np(masked.masked_logsumexp(x, mask, axis=1, include_zero=True))
    np.testing.assert_allclose(
        lse0,
        [np.log1p(np.exp(3) + np.exp(2)), np.log1p(np.exp(5) + np.exp(4)), 0.0],
        rtol=1e-6,
    )


def test_masked_reductions_have_finite_gradients_with_empty_rows_and_huge_values():
    x = np.array([[1.0, 200.0, -3.0], [500.0, 2.0, 0.5], [1.0, 1.0, 1.0]], "float32")
    mask = ops.convert_to_tensor(
        np.array([[True, False, True], [False, True, True], [False, False, False]])
    )

    def total(t):
        return (
            ops.sum(masked.masked_min(t, mask, axis=1)[0])
            + ops.sum(masked.masked_max(t, mask, axis=1)[0])
            + ops.sum(masked.masked_logsumexp(t, mask, axis=1))
            + ops.sum(masked.masked_logsumexp(t, mask, axis=1, include_zero=True))
        )

    value, grad = _value_and_grad(total, x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Unselected entries (including the huge ones) get no gradient.
    np.testing.assert_array_equal(grad[~_np(mask)], 0.0)
    # Row 0: min -> x[0,2], max -> x[0,0]; softmax weights of (1, -3).
    w = np.exp([1.0, -3.0]) / np.exp([1.0, -3.0]).sum()
    w0 = np.exp([1.0, -3.0]) / (1 + np.exp([1.0, -3.0]).sum())
    np.testing.assert_allclose(grad[0, [0, 2]], [1 + w[0] + w0[0], 1 + w[1] + w0[1]], rtol=1e-5)


@pytest.mark.parametrize(
    "labels, anchors, positives, pairs",
    [
        ([7, 3, 7, 3], [0, 1], [2, 3], {0: 2, 1: 3}),
        ([1, 1, 2, 2, 3, 3], [0, 2, 4], [1, 3, 5], {0: 1, 2: 3, 4: 5}),
        # class 9 once (no pair), class 4 three times (third occurrence ignored)
        ([4, 9, 4, 5, 4, 5], [0, 3], [2, 5], {0: 2, 3: 5}),
        ([0, 1, 2], [], [], {}),
        ([0], [], [], {}),
    ],
)
def test_npair_layout(labels, anchors, positives, pairs):
    labels = np.array(labels)
    layout = _npair.npair_layout(labels)
    b = len(labels)
    assert np.flatnonzero(_np(layout.anchors)).tolist() == anchors
    assert np.flatnonzero(_np(layout.positives)).tolist() == positives
    matrix = _np(layout.positive_matrix)
    for i in range(b):
        for j in range(b):
            assert matrix[i, j] == (pairs.get(i) == j)


def test_npair_negatives():
    labels = np.array([4, 9, 4, 5, 4, 5])
    layout = _npair.npair_layout(labels)
    neg_pos = _np(_npair.npair_negatives(labels, layout, "positives"))
    neg_all = _np(_npair.npair_negatives(labels, layout, "all"))
    role_positive = [False, False, True, False, False, True]
    for i in range(6):
        for j in range(6):
            assert neg_all[i, j] == (labels[i] != labels[j])
            assert neg_pos[i, j] == (labels[i] != labels[j] and role_positive[j])
    with pytest.raises(ValueError, match="negatives='some'"):
        _npair.npair_negatives(labels, layout, "some")


def test_miners_work_under_jit():
    labels = LABEL_SETS["pxl"]
    d = _random_distances(np.random.default_rng(3), len(labels))

    def fn(dist):
        out = []
        for miner in (mining.batch_hard, mining.batch_semi_hard, mining.batch_all):
            m = miner(dist, labels)
            out.append(ops.sum(ops.where(m.mask, m.positive_distances - m.negative_distances, 0.0)))
        return ops.stack(out)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        jitted = tf.function(fn, jit_compile=True)
    elif backend == "jax":
        import jax

        jitted = jax.jit(fn)
    else:
        pytest.skip("no jit for this backend")
    np.testing.assert_allclose(_np(jitted(d)), _np(fn(d)), rtol=1e-6, atol=1e-6)


# ------------------------------------------- sorted O(b^2 log b) mining vs the cubic forms
#
# References: the O(b^3) forms (mining._batch_semi_hard_cubic, mining.batch_all through
# the MinedTriplets path of triplet_loss) and float64 brute force written from the
# definitions, on random, tied (distances on a grid of multiples of 0.25 with margin 0.25,
# so hinge terms are exactly 0 at ties) and degenerate batches; values and gradients with
# respect to the distance matrix; with and without XLA, on the active backend.

from keras_featreg import losses as lr  # noqa: E402


def _value_and_grad_jit(fn, x, jit):
    """(value, gradient) of a scalar function of `x`, compiled by XLA when `jit`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=jit)
        def step(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                value = fn(t)
            return value, tape.gradient(value, t)

        value, grad = step(tf.constant(x))
        return np.asarray(value), np.asarray(grad)
    if backend == "jax":
        import jax

        step = jax.value_and_grad(fn)
        value, grad = (jax.jit(step) if jit else step)(x)
        return np.asarray(value), np.asarray(grad)
    pytest.skip(f"no gradient helper for backend {backend}")


def _hinge_or_soft(mined, margin, soft):
    difference = mined.positive_distances - mined.negative_distances
    losses = ops.softplus(difference) if soft else ops.relu(difference + margin)
    mask = mined.mask
    if mined.average_over_active:
        mask = ops.logical_and(mask, ops.greater(losses, 0.0))
    return masked.masked_mean(losses, mask)


def _loss(kind, labels, margin=0.25, soft=False):
    """Triplet loss as a function of the distance matrix: new (sorted) or cubic form."""
    def fn(d):
        if kind == "semi_sorted":
            return _hinge_or_soft(mining._batch_semi_hard_sorted(d, labels), margin, soft)
        if kind == "semi_cubic":
            return _hinge_or_soft(mining._batch_semi_hard_cubic(d, labels), margin, soft)
        if kind == "all_sorted":
            return __import__('keras_featreg.losses._triplet', fromlist=['x'])._batch_all_loss(d, labels, margin, soft, masks=labels_ops.pair_masks(labels))
        return _hinge_or_soft(mining.batch_all(d, labels), margin, soft)  # "all_cubic"
    return fn


def _ref_semi_hard(d, labels, margin, soft):
    """float64 value and gradient (ties share it evenly, as ops.min/max do)."""
    d = np.asarray(d, np.float64)
    b = len(labels)
    grad, terms = np.zeros_like(d), []
    for a in range(b):
        neg = [n for n in range(b) if labels[n] != labels[a]]
        for p in range(b):
            if p == a or labels[p] != labels[a] or not neg:
                continue
            farther = [d[a, n] for n in neg if d[a, n] > d[a, p]]
            value = min(farther) if farther else max(d[a, n] for n in neg)
            chosen = [n for n in neg if d[a, n] == value and (d[a, n] > d[a, p] or not farther)]
            x = d[a, p] - value
            term, slope = ((np.logaddexp(0.0, x), 1 / (1 + np.exp(-x))) if soft
                           else (max(x + margin, 0.0), float(x + margin > 0)))
            terms.append(term)
            grad[a, p] += slope
            for n in chosen:
                grad[a, n] -= slope / len(chosen)
    count = max(len(terms), 1)
    return sum(terms) / count, grad / count


def _ref_batch_all(d, labels, margin, soft):
    d = np.asarray(d, np.float64)
    b = len(labels)
    grad, terms = np.zeros_like(d), []
    for a in range(b):
        for p in range(b):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(b):
                if labels[n] == labels[a]:
                    continue
                x = d[a, p] - d[a, n]
                term, slope = ((np.logaddexp(0.0, x), 1 / (1 + np.exp(-x))) if soft
                               else (max(x + margin, 0.0), 1.0))
                if term > 0:
                    terms.append(term)
                    grad[a, p] += slope
                    grad[a, n] -= slope
    count = max(len(terms), 1)
    return sum(terms) / count, grad / count


def _grid_distances(rng, b):
    """Symmetric distances on multiples of 0.25 (exact in float32): many exact ties."""
    d = rng.integers(0, 9, size=(b, b)) * 0.25
    d = np.triu(d, 1)
    return (d + d.T).astype("float32")


def _distance_cases():
    rng = np.random.default_rng(20)
    return {
        "random_pxl": (np.repeat(np.arange(6), 4)[rng.permutation(24)], _random_distances(rng, 24)),
        "random_singletons": (LABEL_SETS["singletons"], _random_distances(rng, 8)),
        "tied_grid": (np.repeat(np.arange(5), 4), _grid_distances(rng, 20)),
        "tied_grid_uneven": (rng.integers(0, 3, size=17), _grid_distances(rng, 17)),
        "all_equal": (np.array([0, 0, 1, 1, 2, 2]), np.zeros((6, 6), "float32")),
        "one_class": (LABEL_SETS["one_class"], _random_distances(rng, 4)),
        "all_distinct": (LABEL_SETS["all_distinct"], _random_distances(rng, 5)),
        "one_sample": (LABEL_SETS["one_sample"], np.zeros((1, 1), "float32")),
    }


DISTANCE_CASES = _distance_cases()
FORMS = [("semi", False), ("semi", True), ("all", False), ("all", True)]


@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["eager_or_graph", "xla"])
@pytest.mark.parametrize("form, soft", FORMS, ids=["semi", "semi_soft", "all", "all_soft"])
def test_sorted_mining_equals_cubic_and_float64(form, soft, jit):
    reference = _ref_semi_hard if form == "semi" else _ref_batch_all
    for name, (labels, d) in DISTANCE_CASES.items():
        new = _value_and_grad_jit(_loss(f"{form}_sorted", labels, soft=soft), d, jit)
        old = _value_and_grad_jit(_loss(f"{form}_cubic", labels, soft=soft), d, jit)
        value64, grad64 = reference(d, labels, 0.25, soft)
        np.testing.assert_allclose(new[0], old[0], rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(new[1], old[1], rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(new[0], value64, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(new[1], grad64, rtol=0, atol=1e-6, err_msg=name)
        assert np.isfinite(new[0]) and np.all(np.isfinite(new[1])), name


@pytest.mark.parametrize("jit, distance", [
    (False, "euclidean"), (False, "squared_euclidean"), (False, "cosine"),
    # Compiled: one distance (the sorted mining does not depend on it; 24 compilations each).
    pytest.param(True, "euclidean", marks=pytest.mark.slow),
], ids=["eager_or_graph-euclidean", "eager_or_graph-squared_euclidean", "eager_or_graph-cosine",
        "xla-euclidean"])
def test_sorted_triplet_loss_equals_cubic_through_embeddings(distance, jit):
    rng = np.random.default_rng(21)
    batches = {
        "random": (rng.integers(0, 5, size=70), rng.normal(size=(70, 6)).astype("float32")),
        # 1-D points on a grid: many exactly tied distances
        "tied": (np.repeat(np.arange(10), 7), (rng.integers(-3, 4, size=(70, 1)) * 0.5).astype("float32")),
        "identical": (np.repeat(np.arange(10), 7), np.ones((70, 3), "float32")),
    }
    cubic_semi = mining._batch_semi_hard_cubic

    def cubic_all(d, y):
        return mining.batch_all(d, y)

    for name, (labels, x) in batches.items():
        for soft in (False, True):
            for new_mining, old_mining in (("semi_hard", cubic_semi), ("all", cubic_all)):
                kwargs = dict(margin=0.25, soft=soft, distance=distance)
                new = _value_and_grad_jit(
                    lambda t: lr.triplet_loss(labels, t, mining=new_mining, **kwargs), x, jit)
                old = _value_and_grad_jit(
                    lambda t: lr.triplet_loss(labels, t, mining=old_mining, **kwargs), x, jit)
                msg = f"{name} {new_mining} soft={soft}"
                np.testing.assert_allclose(new[0], old[0], rtol=1e-6, atol=1e-6, err_msg=msg)
                # (cosine of 1-D grid points: zero vectors, gradients ~1e4 -> relative tolerance)
                np.testing.assert_allclose(new[1], old[1], rtol=1e-5, atol=1e-5, err_msg=msg)


def test_batch_semi_hard_picks_the_cubic_form_for_small_batches_only():
    labels = np.repeat(np.arange(20), 4)
    d = _random_distances(np.random.default_rng(22), 80)
    for b in (mining.CUBIC_MAX_BATCH, 80):
        auto = mining.batch_semi_hard(d[:b, :b], labels[:b])
        sorted_ = mining._batch_semi_hard_sorted(d[:b, :b], labels[:b])
        mask = _np(auto.mask)
        np.testing.assert_array_equal(mask, _np(sorted_.mask))
        np.testing.assert_allclose(_np(auto.negative_distances)[mask],
                                   _np(sorted_.negative_distances)[mask], rtol=0, atol=0)


@pytest.mark.parametrize("jit", [False, True], ids=["eager_or_graph", "xla"])
def test_soft_batch_all_in_chunks_equals_one_block(jit):
    rng = np.random.default_rng(23)
    labels = rng.integers(0, 4, size=21)
    d = _random_distances(rng, 21)
    whole = _value_and_grad_jit(lambda t: mining.batch_all_soft_mean(t, labels), d, jit)
    for chunk_elements in (21 * 21, 5 * 21 * 21, 20 * 21 * 21):  # chunks of 1, 5 (padded), 20
        chunked = _value_and_grad_jit(
            lambda t, c=chunk_elements: mining.batch_all_soft_mean(t, labels, chunk_elements=c), d, jit)
        np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
        np.testing.assert_allclose(chunked[1], whole[1], rtol=0, atol=1e-7)
    value64, grad64 = _ref_batch_all(d, labels, 0.0, True)
    np.testing.assert_allclose(whole[0], value64, rtol=1e-5)
    np.testing.assert_allclose(whole[1], grad64, rtol=0, atol=1e-6)


def test_prefix_length_matches_numpy_searchsorted():
    rng = np.random.default_rng(24)
    for b in (1, 2, 7, 8, 9, 33):
        keys = np.sort(rng.integers(0, 6, size=(b, b)).astype("float32"), axis=1)
        keys[:, b // 2:] = np.where(rng.random((b, b - b // 2)) < 0.3, np.inf, keys[:, b // 2:])
        keys = np.sort(keys, axis=1)
        queries = rng.integers(-1, 7, size=(b, b)).astype("float32")
        right = _np(mining._prefix_length(keys, queries, ops.less_equal))
        left = _np(mining._prefix_length(keys, queries, ops.less))
        for a in range(b):
            np.testing.assert_array_equal(right[a], np.searchsorted(keys[a], queries[a], "right"))
            np.testing.assert_array_equal(left[a], np.searchsorted(keys[a], queries[a], "left"))


def _numpy_sorted_semi_hard_loss(d, labels, margin):
    """float64 semi-hard loss by per-row sorting (a brute force at b = 1800 is b^3)."""
    d = np.asarray(d, np.float64)
    total, count = 0.0, 0
    for a in range(len(labels)):
        neg = np.sort(d[a, labels != labels[a]])
        pos = np.flatnonzero(labels == labels[a])
        pos = pos[pos != a]
        if not len(neg):
            continue
        c = np.searchsorted(neg, d[a, pos], "right")
        chosen = np.where(c < len(neg), neg[np.minimum(c, len(neg) - 1)], neg[-1])
        total += np.maximum(d[a, pos] - chosen + margin, 0.0).sum()
        count += len(pos)
    return total / max(count, 1)


def test_b1800_forward_and_backward_run():
    """The SVMax paper's FaceNet batch, b = 1800 (the cubic forms would need 23 GB)."""
    rng = np.random.default_rng(25)
    labels = np.repeat(np.arange(450), 4)
    x = rng.normal(size=(1800, 16)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind in ("semi_hard", "all"):
        value, grad = _value_and_grad_jit(lambda t: lr.triplet_loss(labels, t, mining=kind), x, False)
        assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.any(grad != 0.0), kind
    x64 = x.astype(np.float64)
    squared = (x64**2).sum(1)
    d = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2.0 * x64 @ x64.T, 0.0))
    value, _ = _value_and_grad_jit(lambda t: lr.triplet_loss(labels, t, margin=0.2), x, False)
    assert float(value) == pytest.approx(_numpy_sorted_semi_hard_loss(d, labels, 0.2), rel=1e-4)


def test_prefix_length_from_the_native_search_is_exact_near_the_boundary():
    """Keys within a few ulps of ``query + margin``, where ``(q - key) + m > 0`` and
    ``key < fl(q + m)`` disagree: the native-search path (TensorFlow without XLA) must
    give the binary search's counts, through its fallback when the search is off."""
    rng = np.random.default_rng(5)
    margin = np.float32(0.2)
    queries = rng.uniform(0.0, 2.0, size=(64, 40)).astype("float32")
    threshold = queries[:, :1] + margin
    steps = rng.integers(-3, 4, size=(64, 40))
    keys = np.sort(np.nextafter(threshold, np.inf).astype("float32") * 0 + threshold
                   + steps * np.spacing(threshold), axis=1).astype("float32")

    def active(key, q):
        return ops.greater((q - key) + margin, 0.0)

    q = np.repeat(queries[:, :1], 40, axis=1)
    keys_t, q_t = ops.convert_to_tensor(keys), ops.convert_to_tensor(q)
    searched = mining._prefix_length_searched(keys_t, q_t, active, q_t + margin)
    if searched is None:
        pytest.skip("no native row-wise search on this backend (the binary search is used)")
    exact = np.asarray(mining._prefix_length(keys_t, q_t, active))
    np.testing.assert_array_equal(np.asarray(searched), exact)
    expected = (((q[:, :, None] - keys[:, None, :]) + margin) > 0).sum(-1)
    np.testing.assert_array_equal(exact, expected)
    # the plain search disagrees somewhere here, so the exact fallback was exercised
    plain = np.asarray(mining._count_below(keys_t, q_t + margin))
    assert (plain != exact).any()
