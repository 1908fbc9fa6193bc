"""The penalty reaching the training loss equals factor x formula on every Keras version.

Keras >= 3.14 divides activity-regularizer values by the batch size, 3.13 does not.
`tests/run.sh` runs this file under the installed Keras and again under Keras 3.13.
"""

import os

import keras
import numpy as np
import pytest

from _references import ref_covariance, ref_spread_out, ref_svmax, ref_variance
from keras_featreg import backend as kf_backend
from keras_featreg.layers import EmbeddingRegularization
from keras_featreg.regularizers import SVMax, SpreadOut, VICReg


def test_running_the_expected_keras():
    expected = os.environ.get("EXPECT_KERAS_MINOR")
    minor = int(keras.version().split(".")[1])
    if expected is not None:
        assert minor == int(expected), keras.version()
    assert kf_backend.keras_divides_activity_regularizers() == (minor >= 14)


def _cases():
    return [
        (SVMax(factor=0.7), lambda e: ref_svmax(e, 0.7)),
        (SVMax(factor=0.01, bounded=False, normalize=False), lambda e: ref_svmax(e, 0.01, False, False)),
        (VICReg(25.0, 1.0), lambda e: 25.0 * ref_variance(e) + ref_covariance(e)),
        (SpreadOut(1.3), lambda e: ref_spread_out(e, 1.3)),
    ]


def _model(reg, d_in=6, d=5, attach="activity"):
    inputs = keras.Input((d_in,))
    dense = keras.layers.Dense(d, activity_regularizer=reg if attach == "activity" else None,
                               name="emb")
    out = dense(inputs)
    if attach == "layer":
        out = EmbeddingRegularization(reg)(out)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("attach", ["activity", "layer"])
@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("batch", [3, 16])
def test_model_losses_equal_formula(case, attach, batch, rng):
    reg, ref = _cases()[case]
    model = _model(reg, attach=attach)
    x = rng.standard_normal((batch, 6)).astype("float32")
    emb = np.asarray(keras.ops.convert_to_numpy(model(x)), np.float64)
    total = float(sum(keras.ops.convert_to_numpy(v) for v in model.losses))
    np.testing.assert_allclose(total, ref(emb), rtol=2e-4, atol=1e-6)
    # Calling the regularizer directly: what Keras expects from an activity regularizer.
    direct = float(keras.ops.convert_to_numpy(reg(emb.astype("float32"))))
    scale = batch if kf_backend.keras_divides_activity_regularizers() else 1
    np.testing.assert_allclose(direct, scale * ref(emb), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(float(reg.penalty(emb.astype("float32"))), ref(emb), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("case", range(4))
def test_evaluate_loss_is_mse_plus_penalty(case, rng):
    reg, ref = _cases()[case]
    model = _model(reg)
    model.compile(optimizer="sgd", loss="mse")
    x = rng.standard_normal((24, 6)).astype("float32")
    y = rng.standard_normal((24, 5)).astype("float32")
    emb = np.asarray(keras.ops.convert_to_numpy(model(x)), np.float64)
    mse = np.mean((emb - y) ** 2)
    got = model.evaluate(x, y, batch_size=24, verbose=0)
    np.testing.assert_allclose(got, mse + ref(emb), rtol=2e-4)
