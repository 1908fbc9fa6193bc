"""Spectral primitives against float64 numpy, every method, values and gradients."""

import numpy as np
import pytest
from keras import ops

from _helpers import jit, numeric_grad, to_np, value_and_grad
from _references import ref_normalize
from keras_featreg.ops import spectral

METHODS = ["svd", "gram", "newton_schulz"]
SHAPES = [(12, 5), (6, 6), (4, 9), (7, 1), (2, 6), (1, 5), (40, 16)]


def _healthy(rng, b, d):
    return ref_normalize(rng.standard_normal((b, d)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_nuclear_norm_matches_float64(method, shape, rng):
    x = rng.standard_normal(shape)
    ref = np.linalg.svd(x, compute_uv=False).sum()
    got = float(spectral.nuclear_norm(ops.convert_to_tensor(x, "float32"), method=method))
    np.testing.assert_allclose(got, ref, rtol=2e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (6, 6), (3, 1)])
def test_nuclear_norm_gradient_matches_finite_differences(method, shape, rng):
    x = rng.standard_normal(shape)
    expected = numeric_grad(lambda a: np.linalg.svd(a, compute_uv=False).sum(), x)
    _, g = value_and_grad(lambda t: spectral.nuclear_norm(t, method=method), x.astype("float32"))
    np.testing.assert_allclose(g, expected, atol=2e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "kind", ["identical_rows", "zeros", "rank_one", "repeated", "huge", "one_row"]
)
def test_degenerate_inputs_are_finite_and_accurate(method, kind, rng):
    b, d = 16, 8
    if kind == "identical_rows":
        x = np.tile(rng.standard_normal((1, d)), (b, 1))
    elif kind == "zeros":
        x = np.zeros((b, d))
    elif kind == "rank_one":
        x = np.outer(rng.standard_normal(b), rng.standard_normal(d))
    elif kind == "repeated":  # all singular values equal: orthonormal columns * 3
        q, _ = np.linalg.qr(rng.standard_normal((b, d)))
        x = 3.0 * q
    elif kind == "huge":
        x = 1e4 * rng.standard_normal((b, d))
    else:
        x = rng.standard_normal((1, d))
    ref = np.linalg.svd(x, compute_uv=False).sum()
    val, g = value_and_grad(lambda t: spectral.nuclear_norm(t, method=method), x.astype("float32"))
    assert np.isfinite(val) and np.all(np.isfinite(g))
    np.testing.assert_allclose(val, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_nuclear_norm_under_jit(method, rng):
    x = rng.standard_normal((20, 12)).astype("float32")
    ref = np.linalg.svd(x.astype(np.float64), compute_uv=False).sum()
    got = float(jit(lambda t: spectral.nuclear_norm(t, method=method))(x))
    np.testing.assert_allclose(got, ref, rtol=2e-5)


def _not_converged(real):
    """``real`` as it answers when LAPACK does not converge under JAX: NaN in every output."""
    def failing(*args, **kwargs):
        out = real(*args, **kwargs)
        if isinstance(out, (tuple, list)):
            return tuple(ops.full_like(o, float("nan")) for o in out)
        return ops.full_like(out, float("nan"))

    return failing


@pytest.mark.parametrize("method,decomposition", [("svd", "svd"), ("gram", "eigh")])
@pytest.mark.parametrize("compiled", [False, True])
def test_lapack_failure_falls_back_to_newton_schulz(method, decomposition, compiled, rng,
                                                    monkeypatch):
    # gesdd/syevd can fail on a finite matrix (CPU- and thread-dependent); the value and
    # the gradient U V^T must still be right, from the matmul-only polar iteration.
    monkeypatch.setattr(ops, decomposition, _not_converged(getattr(ops, decomposition)))
    x = rng.standard_normal((12, 5))
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    x32 = x.astype("float32")
    if compiled:
        got = float(jit(lambda t: spectral.nuclear_norm(t, method=method))(x32))
    else:
        got, g = value_and_grad(lambda t: spectral.nuclear_norm(t, method=method), x32)
        np.testing.assert_allclose(g, u @ vh, atol=1e-4)
    np.testing.assert_allclose(got, s.sum(), rtol=1e-5)
    # A non-finite input is still NaN, not a finite fallback value.
    bad = x32.copy()
    bad[3, 2] = np.nan
    assert np.isnan(float(spectral.nuclear_norm(ops.convert_to_tensor(bad), method=method)))


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("method", ["auto", "svd", "gram"])
def test_nuclear_norm_of_a_tensor_of_unknown_shape(method, rng):
    # A gathered global batch under tf.distribute has no static shape: the LAPACK paths
    # (and their guard) must still trace.
    import tensorflow as tf

    fn = tf.function(lambda t: spectral.nuclear_norm(t, method=method),
                     input_signature=[tf.TensorSpec((None, None), tf.float32)])
    x = rng.standard_normal((9, 4))
    got = float(fn(tf.constant(x, tf.float32)))
    np.testing.assert_allclose(got, np.linalg.svd(x, compute_uv=False).sum(), rtol=2e-5)


@pytest.mark.parametrize(
    "b,d,expected",
    [(144, 128, (12 / 128, np.sqrt(128) * 12 / 128)), (64, 128, (8 / 128, 64 / 128)), (1, 3, (1 / 3, 1 / 3))],
)
def test_singular_value_bounds_paper_eqs(b, d, expected):
    lo, up = spectral.singular_value_bounds(b, d)
    # Paper eq. 2: L = sqrt(b)/d; eq. 3: U = sqrt(b d / max(b, d)) * sqrt(b) / d.
    np.testing.assert_allclose((lo, up), expected, rtol=1e-12)
    np.testing.assert_allclose(up, np.sqrt(b * d / max(b, d)) * np.sqrt(b) / d, rtol=1e-12)


def test_bounds_hold_for_random_unit_rows(rng):
    for b, d in [(144, 128), (64, 128), (10, 3), (3, 10)]:
        e = _healthy(rng, b, d)
        s_mu = np.linalg.svd(e, compute_uv=False).sum() / d
        lo, up = spectral.singular_value_bounds(b, d)
        assert lo - 1e-12 <= s_mu <= up + 1e-12
        tlo, tup = spectral.mean_singular_value_bounds(ops.convert_to_tensor(e, "float32"))
        np.testing.assert_allclose([float(tlo), float(tup)], [lo, up], rtol=1e-5)


def test_bounds_are_attained(rng):
    # Rank one attains L, orthonormal-ish columns (all s equal) attain U.
    b, d = 12, 4
    v = ref_normalize(rng.standard_normal((1, d)))
    e = np.tile(v, (b, 1))
    lo, up = spectral.singular_value_bounds(b, d)
    np.testing.assert_allclose(np.linalg.svd(e, compute_uv=False).sum() / d, lo, rtol=1e-12)
    e = np.tile(np.eye(d), (b // d, 1))
    np.testing.assert_allclose(np.linalg.svd(e, compute_uv=False).sum() / d, up, rtol=1e-12)


def test_bad_bounds_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        spectral.singular_value_bounds(0, 4)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="method"):
        spectral.nuclear_norm(ops.ones((3, 2)), method="qr")


def test_l2_normalize_rows_zero_row_finite_gradient():
    x = np.array([[0.0, 0.0], [3.0, 4.0]], "float32")
    val, g = value_and_grad(lambda t: ops.sum(spectral.l2_normalize_rows(t)), x)
    np.testing.assert_allclose(to_np(spectral.l2_normalize_rows(x))[1], [0.6, 0.8], rtol=1e-6)
    assert np.all(np.isfinite(g))


def test_reduce_features():
    x = np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5)
    flat = to_np(spectral.reduce_features(x, "flatten"))
    np.testing.assert_array_equal(flat, x.reshape(2, -1))
    avg = to_np(spectral.reduce_features(x, "average"))
    np.testing.assert_allclose(avg, x.mean(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize("shape", [(64, 8), (8, 64), (30, 10)])
@pytest.mark.parametrize("kind", ["healthy", "half", "rank_one", "zeros"])
def test_gram_form_newton_schulz(shape, kind, rng):
    b, d = shape
    k = min(b, d)
    if kind == "healthy":
        x = rng.standard_normal(shape)
    elif kind == "half":
        x = rng.standard_normal((b, k // 2)) @ rng.standard_normal((k // 2, d))
    elif kind == "rank_one":
        x = np.outer(rng.standard_normal(b), rng.standard_normal(d))
    else:
        x = np.zeros(shape)
    assert spectral._rectangular(ops.convert_to_tensor(x, "float32"))
    ref = np.linalg.svd(x, compute_uv=False).sum()
    val, g = value_and_grad(lambda t: spectral.nuclear_norm(t, "newton_schulz"), x.astype("float32"))
    assert np.isfinite(val) and np.all(np.isfinite(g))
    np.testing.assert_allclose(val, ref, rtol=1e-3, atol=1e-6)
    if kind == "healthy":  # full rank: the gradient is U V^T
        u, _, vt = np.linalg.svd(x, full_matrices=False)
        np.testing.assert_allclose(g, u @ vt, atol=2e-3)


def _compose(coeffs, x):
    for a, b, c in coeffs:
        x = x * (a + x * x * (b + c * x * x))
    return x


def test_polar_schedule_converges_on_its_design_interval():
    # float64 composition of the stored quintics: [5e-3, 1] -> 1 within 1e-9, never above 1.
    x = np.geomspace(5e-3, 1.0, 20001)
    f = _compose(spectral._POLAR_COEFFS, x)
    assert np.max(np.abs(1.0 - f)) < 1e-9
    assert np.all(_compose(spectral._POLAR_COEFFS, np.linspace(0.0, 1.0, 20001)) <= 1.0 + 1e-9)
    # Extra steps use (15x - 10x^3 + 3x^5)/8, whose fixed point 1 is attracting.
    f = _compose(spectral._step_coeffs(10), x)
    assert np.max(np.abs(1.0 - f)) < 1e-9


def test_polar_schedule_is_what_the_tool_computes():
    pytest.importorskip("scipy")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "make_polar_coefficients.py"
    spec = importlib.util.spec_from_file_location("make_polar_coefficients", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    computed = tool.schedule(5e-3, len(spectral._POLAR_COEFFS))
    np.testing.assert_allclose(np.array(computed), np.array(spectral._POLAR_COEFFS), rtol=1e-4)


@pytest.mark.parametrize("iterations", [1, 3, 6, 9])
@pytest.mark.parametrize("b", [30, 48])  # direct form; Gram form (b >= 2 d)
def test_newton_schulz_iterations(iterations, b, rng):
    # A spectrum spread over [1e-2, 1]: few steps under-count the small singular values, the
    # default 6 and more are exact to float32 rounding (direct form) or to the Gram form's
    # documented shift bias (1e-6 s_1^2 / (2 s^2) relative per singular value).
    u, _ = np.linalg.qr(rng.standard_normal((b, 24)))
    v, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    s = np.geomspace(1e-2, 1.0, 24)
    x = (u * s) @ v.T
    got = float(spectral.nuclear_norm(ops.convert_to_tensor(x, "float32"), "newton_schulz", iterations))
    if iterations >= 6:
        bias = np.sum(1e-6 / (2 * s**2) * s) if b >= 48 else 0.0
        np.testing.assert_allclose(got, s.sum() - bias, rtol=1e-5 if b >= 48 else 2e-6)
    else:
        assert got < s.sum() * (1 - 1e-3)
