"""``model.export()`` with a keras-featreg regularizer attached, and penalties without a
static batch size (JAX's ``jax.export``/``jax2tf`` traces with a symbolic batch dimension).

Under ``KERAS_BACKEND=jax`` Keras's default export converts the model with ``jax2tf`` and
a symbolic ``"batch"`` dimension; the regularizers used to call ``int()`` on it
(``InconclusiveDimensionOperation``).  They now treat a symbolic dimension as unknown and
take their dynamic-shape paths.
"""


import keras
import numpy as np
import pytest

from keras_featreg import SVMax, SpreadOut, VICReg
from keras_featreg.layers import EmbeddingRegularization
from _helpers import export_and_reload, require_tf_saved_model_export

EPS32 = float(np.finfo(np.float32).eps)


def assert_served_close(served, expected, fan_in):
    """Served float32 outputs equal ``model.predict``'s within a few roundings per term of
    the dot products (the SavedModel may fuse or order the same float32 math differently)."""
    served, expected = np.asarray(served), np.asarray(expected)
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(served, expected, rtol=0, atol=4 * (fan_in + 1) * EPS32 * scale)


REGULARIZERS = {
    "svmax": lambda: SVMax(1.0),
    "vicreg": lambda: VICReg(),
    "spreadout": lambda: SpreadOut(1.0),
}


def _model(regularizer, attach):
    inputs = keras.Input((6,))
    if attach == "activity_regularizer":
        outputs = keras.layers.Dense(4, activity_regularizer=regularizer)(inputs)
    else:
        outputs = EmbeddingRegularization(regularizer)(keras.layers.Dense(4)(inputs))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("attach", ["activity_regularizer", "EmbeddingRegularization"])
@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_export_with_regularizer_serves_predict(name, attach, tmp_path):
    require_tf_saved_model_export()
    keras.utils.set_random_seed(0)
    model = _model(REGULARIZERS[name](), attach)
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    expected = model.predict(x, verbose=0)
    model(x)  # the penalty is still there in a plain call
    assert len(model.losses) == 1 and np.isfinite(float(np.asarray(model.losses[0])))
    served = export_and_reload(model, tmp_path)
    assert_served_close(served.serve(x), expected, fan_in=6)
    # Another batch size: the exported function has no fixed batch.
    x5 = x[:5]
    assert_served_close(served.serve(x5), model.predict(x5, verbose=0), fan_in=6)


@pytest.mark.parametrize("make", [
    lambda: SVMax(1.0, method="svd"),
    lambda: SVMax(1.0, method="gram"),
    lambda: SVMax(1.0, method="newton_schulz"),
    lambda: SVMax(0.5, bounded=False, normalize=False),
    lambda: VICReg(covariance_method="gram"),
    lambda: VICReg(covariance_method="covariance"),
    lambda: SpreadOut(1.0, normalize=False),
], ids=["svd", "gram", "newton_schulz", "vanilla", "vicreg_gram", "vicreg_cov", "spreadout_raw"])
def test_penalty_needs_no_static_batch(make):
    """The penalty traced with an unknown (TF) or symbolic (JAX) batch dimension equals the
    one computed with the static shape, on both sides of b = d."""
    backend = keras.backend.backend()
    regularizer = make()
    static = regularizer.penalty
    if backend == "tensorflow":
        import tensorflow as tf

        traced = tf.function(regularizer.penalty,
                             input_signature=[tf.TensorSpec((None, 6), tf.float32)])
    elif backend == "jax":
        import jax
        from jax import export

        static = jax.jit(regularizer.penalty)  # static shapes; one compilation per shape
        (batch,) = export.symbolic_shape("batch")
        exported = export.export(jax.jit(regularizer.penalty))(
            jax.ShapeDtypeStruct((batch, 6), np.float32))
        traced = exported.call
    else:
        pytest.skip(f"no symbolic batch dimension on the {backend} backend")
    rng = np.random.default_rng(1)
    for b in (3, 20):  # b < d and b > d
        x = rng.normal(size=(b, 6)).astype("float32")
        eager = float(np.asarray(static(x)))
        # "auto" may pick another nuclear-norm method without a static batch; each is
        # within a few float32 roundings of the exact value on these small matrices.
        np.testing.assert_allclose(float(np.asarray(traced(x))), eager,
                                   rtol=64 * EPS32, atol=64 * EPS32)
