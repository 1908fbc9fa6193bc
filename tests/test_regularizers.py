"""SVMax, VICReg and SpreadOut against float64 references: values, gradients, edge cases."""


import keras
import numpy as np
import pytest
from keras import ops

from _helpers import jit, numeric_grad, saved_and_loaded_losses, to_np, value_and_grad
from _references import ref_covariance, ref_spread_out, ref_svmax, ref_variance
from keras_featreg.backend import keras_divides_activity_regularizers
from keras_featreg.regularizers import SVMax, SpreadOut, VICReg

SHAPES = [(24, 8), (8, 8), (5, 12), (9, 1), (2, 6), (2, 2)]  # b > d, b = d, b < d, d = 1, b = 2
METHODS = ["svd", "gram", "newton_schulz", "auto"]


def _vicreg_ref(e, vf=25.0, cf=1.0, gamma=1.0, eps=1e-4):
    return vf * ref_variance(e, gamma, eps) + cf * ref_covariance(e)


def _regs():
    """(name, regularizer factory, float64 reference)."""
    return {
        "svmax": (lambda m: SVMax(factor=1.3, method=m), lambda e: ref_svmax(e, 1.3)),
        "svmax_vanilla": (lambda m: SVMax(0.5, bounded=False, normalize=False, method=m),
                          lambda e: ref_svmax(e, 0.5, False, False)),
        "svmax_unnormalized_bounded": (lambda m: SVMax(2.0, normalize=False, method=m),
                                       lambda e: ref_svmax(e, 2.0, True, False)),
        "vicreg": (lambda m: VICReg(), _vicreg_ref),
        "vicreg_gram": (lambda m: VICReg(3.0, 2.0, gamma=0.5, epsilon=1e-3, covariance_method="gram"),
                        lambda e: _vicreg_ref(e, 3.0, 2.0, 0.5, 1e-3)),
        "vicreg_variance_only": (lambda m: VICReg(1.0, 0.0), lambda e: ref_variance(e)),
        "vicreg_covariance_only": (lambda m: VICReg(0.0, 1.0, covariance_method="covariance"),
                                   lambda e: ref_covariance(e)),
        "spread_out": (lambda m: SpreadOut(1.0), lambda e: ref_spread_out(e)),
    }


REG_NAMES = list(_regs())


@pytest.mark.parametrize("name", REG_NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_value_matches_float64_reference(name, shape, rng):
    make, ref = _regs()[name]
    x = 0.5 * rng.standard_normal(shape)
    methods = METHODS if name.startswith("svmax") else ["auto"]
    for method in methods:
        got = float(make(method).penalty(x.astype("float32")))
        np.testing.assert_allclose(got, ref(x), rtol=5e-5, atol=1e-6, err_msg=method)


@pytest.mark.parametrize("name", REG_NAMES)
@pytest.mark.parametrize("shape", [(7, 4), (4, 6), (5, 1)])
def test_gradient_matches_finite_differences(name, shape, rng):
    make, ref = _regs()[name]
    x = rng.standard_normal(shape)
    expected = numeric_grad(ref, x)
    methods = ["svd", "gram", "newton_schulz"] if name.startswith("svmax") else ["auto"]
    for method in methods:
        reg = make(method)
        _, g = value_and_grad(lambda t: reg.penalty(t), x.astype("float32"))
        np.testing.assert_allclose(g, expected, atol=3e-4, rtol=2e-3, err_msg=method)


def _degenerate(kind, rng, b=12, d=6):
    if kind == "identical_rows":
        return np.tile(rng.standard_normal((1, d)), (b, 1))
    if kind == "zeros":
        return np.zeros((b, d))
    if kind == "rank_one":
        return np.outer(rng.standard_normal(b), rng.standard_normal(d))
    if kind == "b_equals_1":
        return rng.standard_normal((1, d))
    if kind == "repeated_singular_values":
        q, _ = np.linalg.qr(rng.standard_normal((b, d)))
        return 2.0 * q
    if kind == "huge":
        return 1e4 * rng.standard_normal((b, d))
    raise AssertionError(kind)


DEGENERATE = ["identical_rows", "zeros", "rank_one", "b_equals_1", "repeated_singular_values", "huge"]


@pytest.mark.parametrize("name", REG_NAMES)
@pytest.mark.parametrize("kind", DEGENERATE)
def test_degenerate_input_is_finite(name, kind, rng):
    make, ref = _regs()[name]
    x = _degenerate(kind, rng)
    methods = ["svd", "gram", "newton_schulz"] if name.startswith("svmax") else ["auto"]
    for method in methods:
        reg = make(method)
        val, g = value_and_grad(lambda t: reg.penalty(t), x.astype("float32"))
        assert np.isfinite(val), (method, val)
        assert np.all(np.isfinite(g)), method
        if kind != "huge" or not name.startswith(("svmax_vanilla", "vicreg")):
            np.testing.assert_allclose(val, ref(x), rtol=2e-4, atol=2e-5, err_msg=method)
        else:  # huge unnormalized values: relative accuracy only
            np.testing.assert_allclose(val, ref(x), rtol=2e-3, err_msg=method)


def test_svmax_known_values():
    # Rank one (identical unit rows): s_mu = L, penalty = e * factor.
    e = np.tile([[0.6, 0.8, 0.0]], (6, 1)).astype("float32")
    np.testing.assert_allclose(float(SVMax(2.0).penalty(e)), 2.0 * np.e, rtol=1e-5)
    # All singular values equal (orthonormal columns): s_mu = U, penalty = factor.
    e = np.tile(np.eye(3), (2, 1)).astype("float32")
    np.testing.assert_allclose(float(SVMax(2.0).penalty(e)), 2.0, rtol=1e-5)
    # Vanilla: -factor * sum(s) / d with s = (sqrt(2), sqrt(2), sqrt(2)).
    np.testing.assert_allclose(float(SVMax(0.5, bounded=False).penalty(e)), -0.5 * np.sqrt(2), rtol=1e-5)


def test_svmax_b_less_than_d_stays_within_bounds(rng):
    # The official code's s_mu (divided by k) exceeds U here; ours stays in [factor, factor e].
    e = rng.standard_normal((64, 128)).astype("float32")
    p = float(SVMax(1.0).penalty(e))
    assert 1.0 <= p <= np.e
    s_mu = float(SVMax(1.0).mean_singular_value(e))
    assert s_mu <= np.sqrt(64) * np.sqrt(64) / 128 + 1e-6


def test_vicreg_known_values():
    # Two points +-1 on every axis: var = 2 (unbiased), std = sqrt(2 + eps) > 1 -> v = 0;
    # covariance of identical columns: C_ij = 2 for all i, j -> c = (d^2 - d) * 4 / d.
    z = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], "float32")
    reg = VICReg(25.0, 1.0)
    np.testing.assert_allclose(float(reg.variance_term(z)), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(reg.covariance_term(z)), 6 * 4 / 3, rtol=1e-6)
    # Constant batch: std = sqrt(eps) = 0.01 -> v = 0.99.
    np.testing.assert_allclose(float(reg.variance_term(np.ones((4, 3), "float32"))), 0.99, rtol=1e-6)


def test_spread_out_known_value():
    # Orthonormal basis in d=2 plus its negatives: M1 = -1/3, M2 = 1/3 -> 1/9 + (1/3 - 1/2)^+ = 1/9.
    e = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], "float32")
    np.testing.assert_allclose(float(SpreadOut(1.0).penalty(e)), 1 / 9, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", REG_NAMES)
def test_half_precision_input(name, dtype, rng):
    make, ref = _regs()[name]
    x = rng.standard_normal((16, 8)).astype("float32")
    xh = ops.cast(x, dtype)
    x_rounded = to_np(ops.cast(xh, "float32")).astype(np.float64)
    reg = make("auto")
    val, g = value_and_grad(lambda t: reg.penalty(t), xh)
    assert to_np(reg.penalty(xh)).dtype == np.float32
    assert np.isfinite(float(val)) and np.all(np.isfinite(to_np(ops.cast(g, "float32"))))
    np.testing.assert_allclose(float(val), ref(x_rounded), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "bad,match",
    [(np.float32(1.0), "rank"), (np.ones(4, "float32"), "rank"), (np.ones((4, 3), "int32"), "dtype")],
)
@pytest.mark.parametrize("name", ["svmax", "vicreg", "spread_out"])
def test_bad_input_raises_naming_what_was_received(name, bad, match):
    make, _ = _regs()[name]
    with pytest.raises(ValueError, match=match) as info:
        make("auto").penalty(bad)
    assert "Received" in str(info.value)


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: SVMax(factor=-1.0), "factor"),
        (lambda: SVMax(method="qr"), "method"),
        (lambda: SVMax(feature_reduction="max"), "feature_reduction"),
        (lambda: SVMax(iterations=0), "iterations"),
        (lambda: SVMax(iterations=2.5), "iterations"),
        (lambda: VICReg(epsilon=0.0), "epsilon"),
        (lambda: VICReg(epsilon=-1e-4), "epsilon"),
        (lambda: VICReg(gamma=0.0), "gamma"),
        (lambda: VICReg(variance_factor=-2.0), "variance_factor"),
        (lambda: VICReg(covariance_method="svd"), "covariance_method"),
        (lambda: SpreadOut(factor=float("nan")), "factor"),
        (lambda: SpreadOut(factor="1"), "factor"),
    ],
)
def test_bad_arguments_raise(factory, match):
    with pytest.raises(ValueError, match=match) as info:
        factory()
    assert "Received" in str(info.value)


@pytest.mark.parametrize("mode", ["flatten", "average"])
def test_rank_4_activations(mode, rng):
    x = rng.standard_normal((6, 3, 2, 4))
    flat = x.reshape(6, -1) if mode == "flatten" else x.mean(axis=(1, 2))
    for make, ref in [(lambda: SVMax(1.0, feature_reduction=mode), ref_svmax),
                      (lambda: VICReg(feature_reduction=mode), _vicreg_ref),
                      (lambda: SpreadOut(feature_reduction=mode), ref_spread_out)]:
        np.testing.assert_allclose(float(make().penalty(x.astype("float32"))), ref(flat), rtol=5e-5)


@pytest.mark.parametrize("name", REG_NAMES)
def test_jit_compiled_path_matches(name, rng):
    make, ref = _regs()[name]
    x = rng.standard_normal((20, 6)).astype("float32")
    reg = make("auto")
    np.testing.assert_allclose(float(jit(reg.penalty)(x)), ref(x), rtol=5e-5, atol=1e-6)


@pytest.mark.tensorflow_only
def test_unknown_batch_dimension_in_graph(rng):
    import tensorflow as tf

    x = rng.standard_normal((10, 6)).astype("float32")
    for reg, ref in [(SVMax(1.0), ref_svmax), (SVMax(1.0, method="gram"), ref_svmax),
                     (SVMax(1.0, method="newton_schulz"), ref_svmax),
                     (VICReg(), _vicreg_ref), (SpreadOut(), ref_spread_out)]:
        for jit_compile in (False, True):
            fn = tf.function(lambda t: reg(t), jit_compile=jit_compile,
                             input_signature=[tf.TensorSpec((None, 6), tf.float32)])
            got = float(fn(x))
            scale = 10 if keras_divides_activity_regularizers() else 1
            np.testing.assert_allclose(got, scale * ref(x), rtol=5e-5, atol=1e-6)


@pytest.mark.tensorflow_only
def test_auto_method_picks_newton_schulz_under_tf_xla(rng):
    import tensorflow as tf

    from keras_featreg.ops import spectral

    seen = {}

    def probe(t):
        seen["method"] = spectral.resolve_method(t, "auto")
        return spectral.nuclear_norm(t)

    tf.function(probe, jit_compile=True)(rng.standard_normal((8, 4)).astype("float32"))
    assert seen["method"] == "newton_schulz"
    tf.function(probe, jit_compile=False)(rng.standard_normal((8, 4)).astype("float32"))
    assert seen["method"] == "svd"


def test_get_config_round_trip():
    for reg in [SVMax(0.3, bounded=False, normalize=False, method="gram", feature_reduction="average"),
                VICReg(3.0, 0.5, 0.9, 1e-3, "gram"), SpreadOut(0.2, normalize=False)]:
        config = reg.get_config()
        assert all(isinstance(v, (int, float, str, bool)) for v in config.values())
        clone = reg.__class__.from_config(config)
        assert clone.get_config() == config
        restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
        assert type(restored) is type(reg) and restored.get_config() == config


def _embedding_model(reg, d=8):
    inputs = keras.Input((10,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    out = keras.layers.Dense(d, activity_regularizer=reg, name="emb")(h)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("reg", [SVMax(1.0), VICReg(), SpreadOut()], ids=["svmax", "vicreg", "spread"])
def test_save_load_keras_gives_same_loss(reg, tmp_path, rng):
    model = _embedding_model(reg)
    x = rng.standard_normal((12, 10)).astype("float32")
    before, after, loaded = saved_and_loaded_losses(model, x, tmp_path)
    np.testing.assert_allclose(after, before, rtol=1e-6)
    assert type(loaded.get_layer("emb").activity_regularizer) is type(reg)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("reg", [SVMax(1.0), VICReg(), SpreadOut()], ids=["svmax", "vicreg", "spread"])
def test_fit_few_steps(reg, jit_compile, rng):
    model = _embedding_model(reg)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=jit_compile)
    x = rng.standard_normal((64, 10)).astype("float32")
    y = rng.standard_normal((64, 8)).astype("float32")
    hist = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    losses = hist.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("reg", [SVMax(1.0), VICReg(), SpreadOut()], ids=["svmax", "vicreg", "spread"])
def test_fit_mixed_float16(reg, rng):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _embedding_model(reg)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        x = rng.standard_normal((64, 10)).astype("float32")
        y = rng.standard_normal((64, 8)).astype("float32")
        hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"]))
        model(x[:16])
        assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in model.losses)
    finally:
        keras.config.set_dtype_policy("float32")


def test_auto_method_by_backend_and_size(monkeypatch):
    import keras

    from keras_featreg import backend
    from keras_featreg.ops import spectral

    tiny, mid = ops.ones((16, 8)), ops.ones((144, 128))
    on_jax_cpu = False
    if keras.backend.backend() == "jax":
        import jax

        on_jax_cpu = jax.default_backend() == "cpu"
    for threads, expected in [("1", "gram"), ("2", "newton_schulz" if on_jax_cpu else "gram")]:
        for name in backend._BLAS_THREAD_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", threads)
        backend.lapack_threads_compete.cache_clear()
        try:
            assert spectral.resolve_method(tiny, "auto") == "svd"
            assert spectral.resolve_method(mid, "auto") == expected
            assert spectral.resolve_method(mid, "svd") == "svd"
        finally:
            backend.lapack_threads_compete.cache_clear()
