"""The distance guarantees that must hold on every CPU, backend and compiler.

Every assertion is either exact where the algorithm guarantees it on any hardware
(the difference of equal floats is 0; an entry within the expansion's rigorous rounding
bound is 0) or uses a tolerance derived from the dtype (``gamma_k = k u / (1 - k u)``,
Higham's bound for a sum of ``k`` rounded terms in any order), never a constant tuned on
one machine.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_featreg import evaluation
from keras_featreg.ops import pairwise as distances
from _helpers import jit, value_and_grad

METRICS = ["euclidean", "squared_euclidean", "cosine"]
BACKEND = keras.backend.backend()
# Float64 is float32 on JAX without jax_enable_x64, and Keras's torch backend computes
# float64 matmuls in float32 (keras.backend.result_type): test what the backend can hold.
FLOATS = ["float32", "float64"] if BACKEND == "tensorflow" else ["float32"]


def _np(x):
    return np.asarray(ops.convert_to_numpy(ops.cast(x, "float64")))


def _gamma(k, dtype):
    ku = k * distances.unit_roundoff(dtype)
    return ku / (1.0 - ku)


def _ref(x, y, metric):
    """float64 reference of the rows as given (pairwise differences, no expansion)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if metric == "cosine":
        nx = np.linalg.norm(x, axis=1, keepdims=True)
        ny = np.linalg.norm(y, axis=1, keepdims=True)
        x = x / np.where(nx > 0, nx, 1)
        y = y / np.where(ny > 0, ny, 1)
        return 1.0 - x @ y.T
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return d2 if metric == "squared_euclidean" else np.sqrt(d2)


def _batch_with_duplicates(rng, b=48, d=32, scale=1.0, dtype="float32"):
    x = (scale * rng.normal(size=(b, d))).astype(dtype)
    sources = rng.choice(b, size=8, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(b), sources), size=8, replace=False)
    x[targets] = x[sources]
    duplicate = np.all(x[:, None, :] == x[None, :, :], axis=-1)
    return x, duplicate


def _unit_pairs(rng, distance, b=64, d=128):
    """Unit rows; row 2k+1 lies at exactly `distance` (in float64) from row 2k."""
    x = rng.normal(size=(b, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for k in range(0, b, 2):
        v = rng.normal(size=d)
        v -= (v @ x[k]) * x[k]
        v /= np.linalg.norm(v)
        angle = 2.0 * np.arcsin(distance / 2.0)
        x[k + 1] = np.cos(angle) * x[k] + np.sin(angle) * v
    return x


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("compiled", [False, True])
def test_duplicates_inside_random_batches_are_exact_zeros(metric, scale, compiled):
    x, duplicate = _batch_with_duplicates(np.random.default_rng(0), scale=scale)
    fn = lambda t: distances.pairwise_distances(t, metric=metric)  # noqa: E731
    got = _np((jit(fn) if compiled else fn)(x))
    assert np.all(got[duplicate] == 0.0)
    assert np.all(got[~duplicate] > 0.0)
    expected = _ref(x, x, metric)
    rel = np.abs(got - expected)[~duplicate] / expected[~duplicate]
    # Spread-out rows: the expansion's bound, relative to d2 (halved for d, cosine = d2/2).
    norms = 2.0 * np.max(np.sum((x - x.mean(0)) ** 2, axis=1)) / (1.0 if metric != "cosine" else scale**2)
    d2_min = np.min(_ref(x, x, "squared_euclidean")[~duplicate]) / (1.0 if metric != "cosine" else scale**2)
    assert rel.max() <= 4 * distances.expansion_error_coefficient(32, "float32") * norms / d2_min + 1e-6


@pytest.mark.parametrize("metric", METRICS)
def test_cross_distances_exact_zero_for_rows_shared_by_x_and_y(metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 16)).astype("float32")
    y = rng.normal(size=(30, 16)).astype("float32")
    y[[3, 7, 29]] = x[[0, 5, 19]]
    got = _np(distances.pairwise_distances(x, y, metric=metric))
    same = np.all(x[:, None, :] == y[None, :, :], axis=-1)
    assert same.sum() == 3
    assert np.all(got[same] == 0.0) and np.all(got[~same] > 0.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("metric", METRICS)
def test_duplicates_exact_zero_in_every_float_dtype(dtype, metric):
    if dtype == "float64" and BACKEND == "jax":
        pytest.skip("float64 needs jax_enable_x64")
    x, duplicate = _batch_with_duplicates(np.random.default_rng(2), dtype="float32")
    t = ops.cast(x, dtype)
    got = _np(distances.pairwise_distances(t, metric=metric))
    as_cast = _np(t)
    duplicate = np.all(as_cast[:, None, :] == as_cast[None, :, :], axis=-1)
    assert np.all(got[duplicate] == 0.0) and np.all(got[~duplicate] > 0.0)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("distance", [1e-1, 1e-2, 1e-3])
@pytest.mark.parametrize("compiled", [False, True])
def test_unit_rows_at_small_distances_against_float64(dtype, distance, compiled):
    x = _unit_pairs(np.random.default_rng(3), distance).astype(dtype)
    fn = lambda t: distances.pairwise_distances(t)  # noqa: E731
    got = _np((jit(fn) if compiled else fn)(x))
    expected = _ref(x, x, "euclidean")  # of the rows as stored in `dtype`
    near = (np.arange(0, 64, 2), np.arange(1, 64, 2))
    rel = np.abs(got[near] - expected[near]) / expected[near]
    # Near pairs come from the row differences: exact differences (Sterbenz), a sum of
    # d = 128 squares and a square root, so relative error <= gamma_128 + 2 u.
    assert rel.max() <= _gamma(128, dtype) + 2 * distances.unit_roundoff(dtype)
    assert rel.max() <= 1e-3  # the target, with a margin of > 100 here


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_gradients_at_and_near_zero_against_float64(metric):
    rng = np.random.default_rng(4)
    x = _unit_pairs(rng, 1e-3, b=16, d=8)
    x[5] = x[4]  # a duplicate pair: zero distance, subgradient 0 for that pair
    x = x.astype("float32")
    weights = rng.uniform(0.5, 1.5, size=(16, 16))

    def loss(t):
        return ops.sum(ops.cast(weights, t.dtype) * distances.pairwise_distances(t, metric=metric))

    value, grad = value_and_grad(loss, x)
    x64 = x.astype(np.float64)
    w = weights + weights.T
    if metric == "euclidean":
        diff = x64[:, None, :] - x64[None, :, :]
        d = np.sqrt((diff**2).sum(-1))
        unit = np.divide(diff, d[..., None], out=np.zeros_like(diff), where=d[..., None] > 0)
        expected = (w[..., None] * unit).sum(1)
    else:
        n = np.linalg.norm(x64, axis=1, keepdims=True)
        u = x64 / n
        # d(1 - u_i.u_j)/dx_i = -(u_j - (u_i.u_j) u_i) / |x_i|
        cos = u @ u.T
        expected = -((w[..., None] * (u[None, :, :] - cos[..., None] * u[:, None, :])).sum(1)) / n
        np.fill_diagonal(cos, 0.0)
    assert np.all(np.isfinite(grad))
    expected_value = float((weights * _ref(x, x, metric)).sum())
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-6)
    # Gradient terms are unit vectors (scaled by w <= 3): float32 rounding of the difference
    # over a distance of 1e-3 leaves ~u / 1e-3 relative, times 16 summed terms.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(grad, expected, atol=16 * 3 * 1e3 * distances.unit_roundoff("float32") * scale)


def test_identical_rows_have_exactly_zero_gradient():
    x = np.tile(np.random.default_rng(5).normal(size=(1, 12)), (6, 1)).astype("float32")
    for metric in METRICS:
        value, grad = value_and_grad(lambda t: ops.sum(distances.pairwise_distances(t, metric=metric)), x)
        assert float(value) == 0.0
        assert np.all(grad == 0.0)
        compiled = jit(lambda t: distances.pairwise_distances(t, metric=metric))
        assert np.all(_np(compiled(x)) == 0.0)


def test_more_near_partners_than_refined_stay_within_the_bound():
    """A row with 20 near-duplicates (more than REFINED_PER_ROW): the entries left to the
    expansion are within its rigorous bound of the float64 truth."""
    rng = np.random.default_rng(6)
    base = rng.normal(size=(1, 64))
    x = np.concatenate([base + 1e-3 * rng.normal(size=(20, 64)), rng.normal(size=(40, 64))])
    x = x.astype("float32")
    got = _np(distances.pairwise_distances(x, metric="squared_euclidean"))
    expected = _ref(x, x, "squared_euclidean")
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    sq = (centred**2).sum(1)
    # The centring itself is rounded (u |x| per coordinate): allow that too.
    bound = 2 * distances.expansion_error_coefficient(64, "float32") * (sq[:, None] + sq[None, :])
    bound += 8 * distances.unit_roundoff("float32") * np.abs(x).max() * np.sqrt(64) * np.sqrt(expected)
    assert np.all(np.abs(got - expected) <= bound + 1e-30)


def test_unknown_batch_size_under_tf_function():
    if BACKEND != "tensorflow":
        pytest.skip("dynamic shapes at trace time are a TensorFlow graph feature")
    import tensorflow as tf

    x, duplicate = _batch_with_duplicates(np.random.default_rng(7), b=20, d=6)
    for b in (20, 5):  # fewer rows than REFINED_PER_ROW: the padded path
        fn = tf.function(
            lambda t: distances.pairwise_distances(t),
            input_signature=[tf.TensorSpec((None, 6), tf.float32)],
        )
        got = fn(x[:b]).numpy()
        np.testing.assert_allclose(got, _ref(x[:b], x[:b], "euclidean"), rtol=1e-5, atol=1e-6)
        assert np.all(got[duplicate[:b, :b]] == 0.0)


def test_feature_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"x.shape=\(3, 4\), y.shape=\(2, 5\)"):
        distances.pairwise_distances(np.ones((3, 4)), np.ones((2, 5)))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluation_shares_the_exact_zeros(metric):
    """The NumPy retrieval path: duplicates are at distance exactly 0 and tie, so a
    negative duplicate of a query ranks before its positive duplicate (pessimistic)."""
    x, _ = _batch_with_duplicates(np.random.default_rng(8), b=30, d=16)
    x[1] = x[0]
    x[2] = x[0]
    labels = np.arange(30) % 10
    labels[0], labels[1], labels[2] = 0, 0, 1  # 1 is a positive duplicate, 2 a negative one
    prep = evaluation._Prepared(x, labels, metric)
    block = prep.block(slice(None), slice(None))
    inverse = np.argsort(prep.order)
    a, b_, c = inverse[0], inverse[1], inverse[2]
    assert block[a, b_] == 0.0 and block[a, c] == 0.0
    # Recall@1 against a float64 brute force with the same pessimistic ties.
    d = _ref(x, x, metric)
    np.fill_diagonal(d, np.inf)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    t = np.where(same, d, np.inf).min(1)
    hits = (np.where(same, np.inf, d) <= t[:, None]).sum(1) < 1
    assert not hits[0]  # the negative duplicate ties with the positive one and wins
    got = evaluation.recall_at_k(x, labels, ks=(1,), metric=metric)
    got = got[1] if isinstance(got, dict) else got
    assert float(got) == pytest.approx(hits.mean())
