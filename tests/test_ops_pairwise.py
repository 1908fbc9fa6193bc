"""Tests of keras_featreg.ops.pairwise against float64 numpy loops."""

import numpy as np
import pytest

import keras
from keras import ops

from keras_featreg.ops import pairwise as distances
from _helpers import value_and_grad as _value_and_grad


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _ref_distance(u, v, metric):
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    if metric == "euclidean":
        return float(np.sqrt(np.sum((u - v) ** 2)))
    if metric == "squared_euclidean":
        return float(np.sum((u - v) ** 2))
    nu = u / np.sqrt(max(np.sum(u * u), 1e-12))
    nv = v / np.sqrt(max(np.sum(v * v), 1e-12))
    return max(1.0 - float(np.sum(nu * nv)), 0.0)


def _ref_matrix(x, y, metric):
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            out[i, j] = _ref_distance(x[i], y[j], metric)
    return out


METRICS = ["euclidean", "squared_euclidean", "cosine"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_self_distances_match_loops(metric, scale):
    rng = np.random.default_rng(0)
    x = (scale * rng.normal(size=(9, 5))).astype("float32")
    expected = _ref_matrix(x, x, metric)
    np.fill_diagonal(expected, 0.0)
    got = _np(distances.pairwise_distances(x, metric=metric))
    assert got.shape == (9, 9)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale**2)
    assert np.all(np.diag(got) == 0.0)


@pytest.mark.parametrize("metric", METRICS)
def test_cross_distances_match_loops(metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3)).astype("float32")
    y = rng.normal(size=(6, 3)).astype("float32")
    got = _np(distances.pairwise_distances(x, y, metric=metric))
    np.testing.assert_allclose(got, _ref_matrix(x, y, metric), rtol=1e-5, atol=1e-5)


def test_hand_computed_values():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]], "float32")
    np.testing.assert_allclose(
        _np(distances.pairwise_distances(x)), [[0, 5, 3], [5, 0, 4], [3, 4, 0]], atol=1e-6
    )
    np.testing.assert_allclose(
        _np(distances.pairwise_distances(x, metric="squared_euclidean")),
        [[0, 25, 9], [25, 0, 16], [9, 16, 0]],
        atol=1e-5,
    )
    # cosine: zero row has similarity 0 (distance 1) with everything; cos(x1, x2) = 3/5.
    np.testing.assert_allclose(
        _np(distances.pairwise_distances(x, metric="cosine")),
        [[0, 1, 1], [1, 0, 0.4], [1, 0.4, 0]],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        _np(distances.cosine_similarity_matrix(x[1:])), [[1, 0.6], [0.6, 1]], atol=1e-6
    )
    np.testing.assert_allclose(_np(distances.pairwise_dot(x[1:])), [[25, 9], [9, 9]])
    np.testing.assert_allclose(_np(distances.l2_normalize(x)), [[0, 0], [0.6, 0.8], [1, 0]])
    np.testing.assert_allclose(_np(distances.safe_sqrt(np.array([0.0, 2.25, 9.0]))), [0, 1.5, 3])


@pytest.mark.parametrize("metric", METRICS)
def test_gradients_match_central_differences(metric):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3))
    weights = rng.uniform(size=(5, 5))

    def reference(v):
        return float(np.sum(weights * _ref_matrix(v, v, metric) * (1 - np.eye(5))))

    numeric = np.zeros_like(x)
    eps = 1e-6
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (reference(up) - reference(down)) / (2 * eps)

    w = ops.convert_to_tensor(weights.astype("float32"))
    value, grad = _value_and_grad(
        lambda t: ops.sum(w * distances.pairwise_distances(t, metric=metric)), x.astype("float32")
    )
    np.testing.assert_allclose(value, reference(x), rtol=1e-5)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_finite_gradients_at_zero_distance(metric):
    rng = np.random.default_rng(3)
    batches = {
        "identical": np.tile(rng.normal(size=(1, 4)), (6, 1)),
        "zeros": np.zeros((5, 4)),
        "single": rng.normal(size=(1, 4)),
        "duplicate_pair": np.concatenate([rng.normal(size=(3, 4))] * 2),
    }
    for case, x in batches.items():
        value, grad = _value_and_grad(
            lambda t: ops.sum(distances.pairwise_distances(t, metric=metric)), x.astype("float32")
        )
        assert np.isfinite(value), case
        assert np.all(np.isfinite(grad)), case
        if case in ("identical", "single") or (case == "zeros" and metric != "cosine"):
            # Every distance is 0 and, where the distance is not differentiable, the
            # gradient is defined as 0.
            assert abs(float(value)) < 1e-5, case
            np.testing.assert_allclose(grad, 0.0, atol=1e-5, err_msg=case)


def test_duplicate_rows_gradient_ignores_the_zero_pair():
    """At a duplicate pair the gradient is the other pairs' gradient (the zero pair adds 0)."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(3, 2))
    x = np.concatenate([base, base[:1]]).astype("float64")  # row 3 duplicates row 0

    def reference_without_zero_pair(v):
        total = 0.0
        for i in range(4):
            for j in range(4):
                if i != j and {i, j} != {0, 3}:
                    total += np.sqrt(np.sum((v[i] - v[j]) ** 2))
        return total

    numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += 1e-6
        down[idx] -= 1e-6
        numeric[idx] = (reference_without_zero_pair(up) - reference_without_zero_pair(down)) / 2e-6
    _, grad = _value_and_grad(
        lambda t: ops.sum(distances.pairwise_distances(t)), x.astype("float32")
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(dtype):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 4)).astype("float32")
    half = ops.cast(x, dtype)
    got = distances.pairwise_distances(half)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    rounded = _np(ops.cast(half, "float32"))
    expected = _ref_matrix(rounded, rounded, "euclidean")
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(_np(got), expected, rtol=1e-5, atol=1e-5)


def test_jit_compiled_distances_match_eager():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 3)).astype("float32")
    eager = _np(distances.pairwise_distances(x, metric="euclidean"))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda t: distances.pairwise_distances(t), jit_compile=True)
    elif backend == "jax":
        import jax

        fn = jax.jit(lambda t: distances.pairwise_distances(t))
    else:
        pytest.skip("no jit for this backend")
    np.testing.assert_allclose(_np(fn(x)), eager, rtol=1e-6, atol=1e-6)


def test_max_distance_on_unit_sphere_is_attained():
    x = np.array([[1.0, 0.0], [-1.0, 0.0]], "float32")  # antipodal unit vectors
    for metric in METRICS:
        got = float(_np(distances.pairwise_distances(x, metric=metric))[0, 1])
        assert got == pytest.approx(distances.max_distance_on_unit_sphere(metric), abs=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: distances.pairwise_distances(np.ones((3, 2)), metric="manhattan"), "metric='manhattan'"),
        (lambda: distances.pairwise_distances(np.ones((3, 2), "int32")), "int32"),
        (lambda: distances.pairwise_distances(np.ones((3,), "float32")), r"rank >= 2"),
        (lambda: distances.pairwise_distances(np.ones((3, 2, 2), "float32")), r"rank <= 2"),
        (lambda: distances.pairwise_distances(np.ones((3, 2)), np.ones((3,), "float32")), "`y`"),
        (lambda: distances.max_distance_on_unit_sphere("L2"), "metric='L2'"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
