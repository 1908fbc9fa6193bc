"""CircleLoss (Sun et al., CVPR 2020) against pytorch-metric-learning 2.9, NumPy and Keras.

* ``tests/fixtures/pml_circle.npz`` (``tools/make_pml_circle_fixtures.py``): PML's value and
  gradient, computed in float64 on the stored float32 inputs.
* An independent float64 NumPy model of the formula, its gradient by finite differences
  with the weights alpha held at their values (PML detaches them).
* ``keras.losses.Circle``: same per-anchor values and the same "mean over the non-zero
  anchors" on L2-normalized embeddings; a different gradient (Keras differentiates through
  alpha), checked against the NumPy model with live weights.
"""

import json
import os

import keras
import numpy as np
import pytest
from _helpers import jit, numeric_grad, to_np, value_and_grad
from _references import _unit, ref_circle

from keras_featreg import losses as L
from keras_featreg import miners, reducers

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pml_circle.npz")
PML = np.load(FIXTURES)
CASES = {c["name"]: c for c in json.loads(str(PML["manifest"]))["cases"]}

# float32 tolerances. The logits are gamma * alpha * (S - Delta) with |gamma alpha| up to
# ~400 (gamma = 256): a rounding of S by a few float32 ulps (~2e-7) moves a logit by up to
# ~1e-5 absolute, i.e. a relative change of ~1e-5 of the softmax weights that make up the
# gradient. Values: relative 1e-6 (measured <= 2.4e-7); gradients: 2e-5 of the gradient's
# largest entry (measured <= 7.6e-6, the antipodal case), plus rtol 1e-5.
VALUE_RTOL = 1e-6
GRAD_RTOL, GRAD_SCALED_ATOL = 1e-5, 2e-5


def _assert_grad_close(got, want):
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=GRAD_RTOL, atol=GRAD_SCALED_ATOL * scale)


def _loss_from(ours, **extra):
    miner = None
    if "miner" in ours:
        miner = getattr(miners, ours["miner"]["class"])(**ours["miner"]["kwargs"])
    return L.CircleLoss(**ours["kwargs"], miner=miner, **extra)


_JAX_COMPILED = {}


def _jax_compiled(loss, grad):
    """One ``jax.jit`` function per loss configuration, labels as an argument: JAX then
    compiles once per configuration and shape (XLA compiles of this loss take seconds on
    CPU, op-by-op JAX even longer)."""
    import jax

    config = json.dumps(keras.saving.serialize_keras_object(loss), sort_keys=True, default=str)
    key = (config, loss.dtype, grad)  # (Keras's Loss.get_config has no dtype)
    if key not in _JAX_COMPILED:
        fn = lambda t, y: loss(y, t)  # noqa: E731
        _JAX_COMPILED[key] = jax.jit(jax.value_and_grad(fn) if grad else fn)
    return _JAX_COMPILED[key]


def _value_and_grad_of(loss, labels, x, jit_compile=True):
    """Value and gradient w.r.t. `x`; compiled on JAX unless ``jit_compile=False``."""
    if jit_compile and keras.backend.backend() == "jax":
        value, grad = _jax_compiled(loss, True)(x, np.asarray(labels))
        return np.asarray(value), np.asarray(grad)
    return value_and_grad(lambda t: loss(labels, t), x)


def _value(loss, labels, x):
    if keras.backend.backend() == "jax":
        return np.asarray(_jax_compiled(loss, False)(x, np.asarray(labels)))
    return to_np(loss(labels, x))


def _run(fn, x):
    """``fn(x)`` as NumPy; compiled on JAX."""
    if keras.backend.backend() == "jax":
        import jax

        fn = jax.jit(fn)
    return to_np(fn(x))


def _batch(seed, b=12, d=6, classes=4, scale=0.8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, size=b), (scale * rng.normal(size=(b, d))).astype("float32")


# ------------------------------------------------------------ NumPy float64 reference


def ref_value_and_grad(labels, x, **kwargs):
    """Reference value and its gradient with alpha held at ``x`` (finite differences)."""
    x = np.asarray(x, np.float64)
    value = ref_circle(labels, x, **kwargs)
    grad = numeric_grad(lambda t: ref_circle(labels, t, alpha_at=x, **kwargs), x)
    return value, grad


# ---------------------------------------------------------------------------- PML parity


def test_fixtures_cover_the_cases():
    names = set(CASES)
    assert len(names) >= 15 and all(c["relation"] == "exact" for c in CASES.values())
    assert any("miner" in c["ours"] for c in CASES.values())
    assert {c["ours"]["kwargs"].get("reducer", "mean_nonzero") for c in CASES.values()} == {
        "mean_nonzero", "mean", "sum"}
    assert any(c["ours"]["kwargs"]["m"] != 0.4 for c in CASES.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_pml_parity_values_and_gradients(name):
    labels, x = PML[f"{name}/labels"], PML[f"{name}/embeddings"]
    value, grad = _value_and_grad_of(_loss_from(CASES[name]["ours"]), labels, x)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, PML[f"{name}/value"], rtol=VALUE_RTOL, atol=1e-6)
    _assert_grad_close(grad, PML[f"{name}/grad"])


def test_pml_parity_in_float64():
    """Given float64 input the loss computes in float64: PML's float64 numbers to 1e-10."""
    backend = keras.backend.backend()
    if backend == "torch":
        pytest.skip("Keras's torch backend computes float64 in float32 (see test_float64.py)")
    import contextlib

    context = contextlib.nullcontext()
    if backend == "jax":
        import jax

        context = jax.enable_x64(True)
    with context:
        for name in ("circle_singleton_b10_d8", "circle_mined_m0.25_g256_random_b20_d8"):
            labels = PML[f"{name}/labels"]
            x = PML[f"{name}/embeddings"].astype(np.float64)
            loss = _loss_from(CASES[name]["ours"], dtype="float64")
            value, grad = _value_and_grad_of(loss, labels, x)
            assert grad.dtype == np.float64
            np.testing.assert_allclose(value, PML[f"{name}/value"], rtol=1e-10)
            want = PML[f"{name}/grad"]
            np.testing.assert_allclose(grad, want, rtol=1e-9, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("name", sorted(n for n in CASES if "mined_pairs" in CASES[n]))
def test_the_miner_keeps_the_pairs_pml_keeps(name):
    labels, x = PML[f"{name}/labels"], PML[f"{name}/embeddings"]
    miner = miners.MultiSimilarityMiner(**CASES[name]["ours"]["miner"]["kwargs"])
    distance = L.CircleLoss().distance
    mined = miner(distance(x), labels, distance=distance)
    counts = {"pos": int(to_np(mined.positive).sum()), "neg": int(to_np(mined.negative).sum())}
    assert counts == CASES[name]["mined_pairs"]


# --------------------------------------------------------------------- NumPy reference


@pytest.mark.parametrize("kwargs", [
    {},
    {"m": 0.25, "gamma": 256.0},
    {"m": -0.1, "gamma": 8.0},
    {"reducer": "mean"},
    {"reducer": "sum"},
], ids=["default", "face", "negative_m", "mean", "sum"])
def test_matches_float64_numpy_reference(kwargs):
    for seed in range(3):
        labels, x = _batch(seed, b=10, d=5)
        want_value, want_grad = ref_value_and_grad(labels, x.astype(np.float64), **kwargs)
        value, grad = _value_and_grad_of(L.CircleLoss(**kwargs), labels, x)
        np.testing.assert_allclose(value, want_value, rtol=VALUE_RTOL, atol=1e-6)
        # Finite differences in float64 (h = 1e-6) add ~1e-8 relative.
        _assert_grad_close(grad, want_grad)


def test_the_docstring_example_by_hand():
    labels = np.array([0, 0, 1])
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
    want = (np.logaddexp(0, 80 * 1.2 * 0.4) + np.logaddexp(0, 80 * 1.36 * 0.56)) / 2
    assert np.isclose(ref_circle(labels, x), want, rtol=1e-12)
    got = _run(lambda t: L.circle_loss(labels, t), x.astype("float32"))
    np.testing.assert_allclose(got, want, rtol=VALUE_RTOL)


# -------------------------------------------------------------------------- jit / eager


def _compiled_value_and_grad(loss, labels, x):
    """Value and gradient compiled by XLA (jax.jit / tf.function(jit_compile=True))."""
    jit(lambda t: t)  # skips on the backends without an XLA path (torch)
    if keras.backend.backend() == "jax":
        return _value_and_grad_of(loss, labels, x)
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            value = loss(labels, t)
        return value, tape.gradient(value, t)

    value, grad = step(tf.constant(x))
    return np.asarray(value), np.asarray(grad)


@pytest.mark.parametrize("kwargs", [{}, {"miner": "multi_similarity", "reducer": "sum"}],
                         ids=["default", "mined_sum"])
def test_jit_equals_eager(kwargs):
    loss = L.CircleLoss(**kwargs)
    labels, x = _batch(5, b=16, d=6)
    value, grad = _compiled_value_and_grad(loss, labels, x)
    eager_value, eager_grad = _value_and_grad_of(loss, labels, x, jit_compile=False)
    np.testing.assert_allclose(value, eager_value, rtol=VALUE_RTOL)
    _assert_grad_close(grad, eager_grad)


# ------------------------------------------------------------------ keras.losses.Circle


def _keras_batch():
    """L2-normalized rows (Keras's input contract), with a singleton class (l = 0)."""
    labels = np.array([5, 5, 5, 7, 7, 7, 9, 9, 9, 11])
    x = _unit(np.random.default_rng(3).normal(size=(10, 8))).astype("float32")
    return labels, x


def test_keras_circle_same_values_on_normalized_embeddings():
    labels, x = _keras_batch()
    per_anchor = _run(lambda t: keras.losses.circle(labels, t), x)
    np.testing.assert_allclose(per_anchor, ref_circle(labels, x, per_anchor=True),
                               rtol=VALUE_RTOL, atol=1e-6)
    assert per_anchor[-1] == 0.0  # the singleton
    keras_value = _value(keras.losses.Circle(), labels, x)  # sum / #(l_i > 0)
    for distance in ("cosine_similarity", "dot_product"):
        ours = _value(L.CircleLoss(distance=distance), labels, x)
        np.testing.assert_allclose(ours, keras_value, rtol=VALUE_RTOL)
        np.testing.assert_allclose(ours, per_anchor.sum() / 9, rtol=VALUE_RTOL)
    mean = _value(L.CircleLoss(reducer="mean"), labels, x)
    np.testing.assert_allclose(mean, per_anchor.mean(), rtol=VALUE_RTOL)
    # Keras's remove_diagonal=False makes each sample its own positive (S = 1): different.
    no_diag = _run(lambda t: keras.losses.circle(labels, t, remove_diagonal=False), x)
    np.testing.assert_allclose(no_diag, ref_circle(labels, x, remove_diagonal=False,
                                                   per_anchor=True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(no_diag, per_anchor, rtol=1e-3)


def test_keras_circle_gradient_goes_through_the_weights():
    """Keras differentiates alpha_p, alpha_n; PML and we hold them constant."""
    labels, x = _keras_batch()
    x64 = x.astype(np.float64)
    _, keras_grad = _value_and_grad_of(keras.losses.Circle(), labels, x)
    _, ours_grad = _value_and_grad_of(L.CircleLoss(distance="dot_product"), labels, x)
    kwargs = {"normalize": False}  # S = x x^T, as both compute it here
    live = numeric_grad(lambda t: ref_circle(labels, t, **kwargs), x64)
    detached = numeric_grad(lambda t: ref_circle(labels, t, alpha_at=x64, **kwargs), x64)
    _assert_grad_close(keras_grad, live)
    _assert_grad_close(ours_grad, detached)
    assert np.max(np.abs(live - detached)) > 0.2 * np.max(np.abs(detached))


# ----------------------------------------------------------- registry, config, validation


def test_get_resolves_the_names():
    for name in ("circle", "circle_loss", "CircleLoss"):
        loss = L.get(name, m=0.25)
        assert isinstance(loss, L.CircleLoss) and loss.m == 0.25
    loss = L.CircleLoss()
    assert (loss.name, loss.m, loss.gamma) == ("circle_loss", 0.4, 80.0)
    assert (L.CircleLoss.default_distance, L.CircleLoss.default_reducer) == (
        "cosine_similarity", "mean_nonzero")


def test_config_and_serialization_round_trip():
    loss = L.CircleLoss(m=0.25, gamma=128.0, miner=miners.MultiSimilarityMiner(0.2),
                        reducer="mean", distance="dot_product", name="circ")
    config = loss.get_config()
    assert config["m"] == 0.25 and config["gamma"] == 128.0 and config["reducer"] == "mean"
    again = L.CircleLoss.from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, L.CircleLoss) and restored.get_config() == config
    assert L.get(keras.saving.serialize_keras_object(loss)).get_config() == config
    labels, x = _batch(7)
    x = _unit(x).astype("float32")
    np.testing.assert_allclose(_value(restored, labels, x), _value(loss, labels, x), rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"distance": "euclidean"}, {"distance": "cosine"}, {"gamma": 0.0}, {"gamma": -1.0},
    {"m": float("nan")}, {"m": "0.4"}, {"miner": "semi_hard"}, {"reduction": "sum"},
])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        L.CircleLoss(**kwargs)


# ------------------------------------------------------------ degenerate and non-finite

DEGENERATE = {
    "b1": (np.array([0]), np.ones((1, 4))),
    "one_class": (np.zeros(5, int), np.random.default_rng(0).normal(size=(5, 4))),
    "singletons": (np.arange(5), np.random.default_rng(1).normal(size=(5, 4))),
    "collapsed": (np.array([0, 0, 1, 1, 2]), np.ones((5, 4))),
    "zeros": (np.array([0, 0, 1, 1]), np.zeros((4, 4))),
    "antipodal": (np.array([0, 0, 1, 1]), np.kron(np.eye(2), [[1.0, 0], [-1, 0]])),
    "far_apart": (np.array([0, 0, 1, 1]), 1e4 * np.eye(4)),
}


@pytest.mark.parametrize("gamma", [80.0, 1024.0])
@pytest.mark.parametrize("batch", sorted(DEGENERATE))
def test_degenerate_batches_finite_values_and_gradients(batch, gamma):
    labels, x = DEGENERATE[batch]
    loss = L.CircleLoss(gamma=gamma)
    value, grad = _value_and_grad_of(loss, labels, x.astype("float32"))
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (value, grad)
    want = ref_circle(labels, x, gamma=gamma) if batch != "zeros" else None
    if want is not None:
        np.testing.assert_allclose(value, want, rtol=VALUE_RTOL, atol=1e-6)
    if batch in ("b1", "one_class", "singletons"):
        assert value == 0.0 and not np.any(grad)
    if batch == "antipodal":  # positive at S = -1, negatives at S = 0: 3.84 gamma, 2 x -0.16 gamma
        assert np.isclose(value, gamma * (2.4 * 1.6 - 0.16) + np.log(2), rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_gives_nan(bad):
    labels, x = _batch(8)
    x[3, 1] = bad
    assert np.isnan(_value(L.CircleLoss(), labels, x))
    assert np.isnan(_value(L.CircleLoss(miner="multi_similarity"), labels, x))


# ------------------------------------------------------------------ miners and reducers


def test_composes_with_pair_miners():
    labels, x = _batch(9, b=16)
    everything = _value(L.CircleLoss(), labels, x)
    by_name = _value(L.CircleLoss(miner="multi_similarity"), labels, x)
    by_object = _value(L.CircleLoss(miner=miners.MultiSimilarityMiner(epsilon=0.1)), labels, x)
    assert by_name == by_object and by_name != everything
    for miner in ("pair_margin", "balanced_pair"):
        value, grad = _value_and_grad_of(L.CircleLoss(miner=miner), labels, x)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
    # A miner that keeps every pair changes nothing.
    keep_all = miners.MultiSimilarityMiner(epsilon=10.0)
    np.testing.assert_allclose(_value(L.CircleLoss(miner=keep_all), labels, x), everything,
                               rtol=1e-7)


def test_composes_with_reducers():
    labels, x = _batch(10, b=12, classes=5)
    per_anchor = ref_circle(labels, x, per_anchor=True)
    got = {name: float(_value(L.CircleLoss(reducer=name), labels, x))
           for name in reducers.NAMES}
    np.testing.assert_allclose(got["sum"], per_anchor.sum(), rtol=VALUE_RTOL)
    np.testing.assert_allclose(got["mean"], per_anchor.mean(), rtol=VALUE_RTOL)
    np.testing.assert_allclose(got["per_anchor_mean"], per_anchor.mean(), rtol=VALUE_RTOL)
    np.testing.assert_allclose(got["mean_nonzero"], per_anchor[per_anchor > 0].mean(),
                               rtol=VALUE_RTOL)
    custom = _value(L.CircleLoss(reducer=reducers.SumReducer()), labels, x)
    np.testing.assert_allclose(custom, got["sum"], rtol=1e-7)


# --------------------------------------------------------------------------------- bounds


def test_bounds():
    lower, upper = L.CircleLoss().bounds(144)
    assert lower == 0.0
    np.testing.assert_allclose(upper, 80 * (2.4 * 1.6 + 1.4 * 0.6) + np.log(71 * 72), rtol=1e-12)
    assert L.CircleLoss().bounds(2) == (0.0, 0.0)
    assert L.CircleLoss(reducer="sum").bounds(16)[1] == 16 * L.CircleLoss().bounds(16)[1]

    class Halve(reducers.Reducer):
        def __call__(self, losses, mask=None):
            return reducers.SumReducer()(losses, mask) / 2

    assert L.CircleLoss(reducer=Halve()).bounds(16) is None
    with pytest.raises(ValueError):
        L.CircleLoss().bounds(1)
    # The extreme batch: a positive at S = -1 and a negative at S = 1 for every anchor.
    labels, x = np.array([0, 0, 1, 1]), np.array([[1.0, 0], [-1, 0], [1, 0], [-1, 0]])
    value = float(_value(L.CircleLoss(), labels, x.astype("float32")))
    assert value <= L.CircleLoss().bounds(4)[1] + 1e-4
    np.testing.assert_allclose(value, 80 * (2.4 * 1.6 + 1.4 * 0.6), rtol=1e-6)
    for seed in range(3):
        labels, x = _batch(seed, b=16)
        lo, up = L.CircleLoss(m=0.25, gamma=256.0).bounds(16)
        assert lo <= float(_value(L.CircleLoss(m=0.25, gamma=256.0), labels, x)) <= up
