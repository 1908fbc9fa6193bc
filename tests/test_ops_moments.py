"""Moment primitives and VICRegLoss against float64 references (values and gradients)."""

import re

import keras
import numpy as np
import pytest
from keras import ops

from _helpers import jit, numeric_grad, to_np, value_and_grad
from _references import ref_covariance, ref_variance
from keras_featreg.losses import VICRegLoss, vicreg_loss, vicreg_terms
from keras_featreg.ops import moments


@pytest.mark.parametrize("shape", [(16, 4), (4, 16), (6, 6), (2, 3), (9, 1)])
@pytest.mark.parametrize("method", ["covariance", "gram", "auto"])
def test_covariance_penalty_methods_agree_with_reference(shape, method, rng):
    z = rng.standard_normal(shape)
    got = float(moments.covariance_penalty(ops.convert_to_tensor(z, "float32"), method))
    np.testing.assert_allclose(got, ref_covariance(z), rtol=2e-5, atol=1e-7)


def test_std_and_variance_penalty(rng):
    z = rng.standard_normal((10, 5)) * np.array([0.1, 0.5, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(to_np(moments.std(z.astype("float32"), 1e-4)),
                               np.sqrt(z.var(0, ddof=1) + 1e-4), rtol=1e-5)
    np.testing.assert_allclose(float(moments.variance_penalty(z.astype("float32"))), ref_variance(z), rtol=1e-5)


def _ref_vicreg(za, zb, li=25.0, mu=25.0, nu=1.0):
    inv = np.mean((za - zb) ** 2)
    return li * inv + mu * (ref_variance(za) / 2 + ref_variance(zb) / 2) + nu * (ref_covariance(za) + ref_covariance(zb))


@pytest.mark.parametrize("shape", [(12, 4), (4, 10), (2, 3)])
def test_vicreg_loss_value_and_gradient(shape, rng):
    za, zb = rng.standard_normal(shape), rng.standard_normal(shape)
    loss = VICRegLoss()
    np.testing.assert_allclose(float(loss(za.astype("float32"), zb.astype("float32"))), _ref_vicreg(za, zb), rtol=2e-5)
    expected = numeric_grad(lambda a: _ref_vicreg(a, zb), za)
    _, g = value_and_grad(lambda t: loss(t, ops.convert_to_tensor(zb, "float32")), za.astype("float32"))
    np.testing.assert_allclose(g, expected, atol=2e-4, rtol=1e-3)


def test_vicreg_terms_and_factors(rng):
    za, zb = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    t = {k: float(v) for k, v in vicreg_terms(za.astype("float32"), zb.astype("float32")).items()}
    np.testing.assert_allclose(t["invariance"], np.mean((za - zb) ** 2), rtol=1e-5)
    np.testing.assert_allclose(t["variance"], ref_variance(za) / 2 + ref_variance(zb) / 2, rtol=1e-5)
    got = float(vicreg_loss(za.astype("float32"), zb.astype("float32"), invariance_factor=1.0,
                            variance_factor=2.0, covariance_factor=3.0))
    np.testing.assert_allclose(got, _ref_vicreg(za, zb, 1.0, 2.0, 3.0), rtol=2e-5)


def test_vicreg_loss_degenerate_and_half(rng):
    for za in [np.zeros((6, 4)), np.ones((1, 4)), np.tile(rng.standard_normal((1, 4)), (6, 1))]:
        val, g = value_and_grad(lambda t: VICRegLoss()(t, t * 0.5), za.astype("float32"))
        assert np.isfinite(val) and np.all(np.isfinite(g))
    za = ops.cast(rng.standard_normal((8, 4)), "float16")
    assert np.isfinite(float(VICRegLoss()(za, za)))


def test_vicreg_loss_jit_and_config(rng):
    za, zb = rng.standard_normal((8, 5)).astype("float32"), rng.standard_normal((8, 5)).astype("float32")
    loss = VICRegLoss(10.0, 5.0, 0.5, covariance_method="gram")
    np.testing.assert_allclose(float(jit(lambda a, b: loss(a, b))(za, zb)),
                               _ref_vicreg(za.astype(np.float64), zb.astype(np.float64), 10.0, 5.0, 0.5), rtol=2e-5)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, VICRegLoss) and clone.get_config() == loss.get_config()


def test_vicreg_loss_bad_input():
    with pytest.raises(ValueError, match="z_a"):
        VICRegLoss()(np.ones(4, "float32"), np.ones(4, "float32"))
    with pytest.raises(ValueError, match="same embedding dimension"):
        VICRegLoss()(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"))
    with pytest.raises(ValueError, match="epsilon"):
        VICRegLoss(epsilon=0)


@pytest.mark.parametrize("shape_a, shape_b", [
    ((8, 4), (6, 4)),  # batch size
    ((8, 4), (8, 5)),  # embedding dimension
    ((8, 4), (8, 4, 1)),  # rank
    ((8, 4), (8,)),
])
@pytest.mark.parametrize("entry", ["class", "vicreg_loss", "vicreg_terms"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_two_views_of_different_shapes_name_both(shape_a, shape_b, entry, as_tensor):
    fn = {"class": VICRegLoss(), "vicreg_loss": vicreg_loss, "vicreg_terms": vicreg_terms}[entry]
    z_a, z_b = np.ones(shape_a, "float32"), np.ones(shape_b, "float32")
    if as_tensor:
        z_a, z_b = ops.convert_to_tensor(z_a), ops.convert_to_tensor(z_b)
    expected = f"Received: z_a.shape={shape_a}, z_b.shape={shape_b}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        fn(z_a, z_b)


@pytest.mark.tensorflow_only
def test_two_views_with_unknown_batch_size_in_tf_graph(rng):
    import tensorflow as tf

    za, zb = rng.standard_normal((8, 5)).astype("float32"), rng.standard_normal((8, 5)).astype("float32")
    loss = VICRegLoss()
    fn = tf.function(lambda a, b: loss(a, b), input_signature=[tf.TensorSpec((None, 5), tf.float32)] * 2)
    np.testing.assert_allclose(float(fn(za, zb)), float(loss(za, zb)), rtol=1e-6)
    with pytest.raises(ValueError, match=re.escape("z_a.shape=(None, 5), z_b.shape=(None, 4)")):
        tf.function(lambda a, b: loss(a, b), input_signature=[
            tf.TensorSpec((None, 5), tf.float32), tf.TensorSpec((None, 4), tf.float32)]).get_concrete_function()
