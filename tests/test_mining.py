"""Tests of keras_featreg.mining against explicit Python loops."""

import numpy as np
import pytest

import keras
from keras import ops

from keras_featreg import mining
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
    positive, negative = (_np(m) for m in mining.pair_masks(labels))
    triplets = _np(mining.triplet_mask(labels))
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
    pos_a, _ = mining.pair_masks(labels)
    pos_b, _ = mining.pair_masks(labels[:, None])
    np.testing.assert_array_equal(_np(pos_a), _np(pos_b))
    with pytest.raises(ValueError, match=r"y_true.shape=\(3, 2\)"):
        mining.labels_vector(np.zeros((3, 2)))


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
    assert mining.get_miner("hard") is mining.batch_hard
    assert mining.get_miner("semi-hard") is mining.batch_semi_hard
    assert mining.get_miner("all") is mining.batch_all
    with pytest.raises(ValueError, match="mining='semihard'"):
        mining.get_miner("semihard")


def test_masked_reductions_values_and_empty_rows():
    x = np.array([[3.0, -1.0, 2.0], [1.0, 5.0, 4.0], [7.0, 8.0, 9.0]], "float32")
    mask = np.array([[True, False, True], [False, True, True], [False, False, False]])
    mins, has = mining.masked_min(x, mask, axis=1)
    maxs, _ = mining.masked_max(x, mask, axis=1)
    np.testing.assert_allclose(_np(mins), [2.0, 4.0, 0.0])
    np.testing.assert_allclose(_np(maxs), [3.0, 5.0, 0.0])
    np.testing.assert_array_equal(_np(has), [True, True, False])
    lse = _np(mining.masked_logsumexp(x, mask, axis=1))
    np.testing.assert_allclose(lse, [np.log(np.exp(3) + np.exp(2)), np.log(np.exp(5) + np.exp(4)), 0.0], rtol=1e-6)
    lse0 = _np(mining.masked_logsumexp(x, mask, axis=1, include_zero=True))
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
            ops.sum(mining.masked_min(t, mask, axis=1)[0])
            + ops.sum(mining.masked_max(t, mask, axis=1)[0])
            + ops.sum(mining.masked_logsumexp(t, mask, axis=1))
            + ops.sum(mining.masked_logsumexp(t, mask, axis=1, include_zero=True))
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
    layout = mining.npair_layout(labels)
    b = len(labels)
    assert np.flatnonzero(_np(layout.anchors)).tolist() == anchors
    assert np.flatnonzero(_np(layout.positives)).tolist() == positives
    matrix = _np(layout.positive_matrix)
    for i in range(b):
        for j in range(b):
            assert matrix[i, j] == (pairs.get(i) == j)


def test_npair_negatives():
    labels = np.array([4, 9, 4, 5, 4, 5])
    layout = mining.npair_layout(labels)
    neg_pos = _np(mining.npair_negatives(labels, layout, "positives"))
    neg_all = _np(mining.npair_negatives(labels, layout, "all"))
    role_positive = [False, False, True, False, False, True]
    for i in range(6):
        for j in range(6):
            assert neg_all[i, j] == (labels[i] != labels[j])
            assert neg_pos[i, j] == (labels[i] != labels[j] and role_positive[j])
    with pytest.raises(ValueError, match="negatives='some'"):
        mining.npair_negatives(labels, layout, "some")


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
