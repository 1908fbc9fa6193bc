"""The "how to add a loss" guide's example, run as written (docs/guides/adding-a-loss.md)."""

import os
import re
import sys
import types

import keras
import numpy as np
import pytest
from _helpers import jit, numeric_grad, value_and_grad
from _references import ref_circle

from keras_featreg import losses, miners

GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                     "guides", "adding-a-loss.md")


@pytest.fixture(scope="module")
def my_losses():
    source = re.findall(r"```python\n(.*?)```", open(GUIDE).read(), flags=re.S)[0]
    module = types.ModuleType("my_losses")
    sys.modules["my_losses"] = module
    exec(compile(source, GUIDE, "exec"), module.__dict__)
    return module


def _batch(seed=0, b=24, d=6):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(b // 4), 4))
    x = rng.normal(size=(b, d)).astype("float32")
    return labels, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_guide_loss_matches_the_library_and_the_formula(my_losses):
    labels, x = _batch()
    mine = my_losses.MyCircleLoss(m=0.25, gamma=32.0)
    library = losses.CircleLoss(m=0.25, gamma=32.0)
    value, grad = value_and_grad(lambda t: mine.call(labels, t), x)
    want_value, want_grad = value_and_grad(lambda t: library.call(labels, t), x)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)

    x64 = x.astype(np.float64)
    np.testing.assert_allclose(value, ref_circle(labels, x64, m=0.25, gamma=32.0), rtol=1e-5)
    # The weights alpha are constants (eq. 5): the reference holds them at x.
    num = numeric_grad(lambda t: ref_circle(labels, t, m=0.25, gamma=32.0, alpha_at=x64), x64)
    np.testing.assert_allclose(grad, num, atol=1e-4 * max(1.0, np.abs(num).max()))
    compiled = jit(lambda t: mine.call(labels, t))
    np.testing.assert_allclose(np.asarray(compiled(x)), value, rtol=1e-5)


def test_the_guide_loss_composes_and_round_trips(my_losses, tmp_path):
    labels, x = _batch(1)
    loss = my_losses.MyCircleLoss(gamma=64.0, miner=miners.MultiSimilarityMiner(),
                                  reducer="mean")
    assert np.isfinite(float(loss(labels, x)))
    assert isinstance(losses.get("my_circle"), my_losses.MyCircleLoss)
    with pytest.raises(ValueError, match="distance="):
        my_losses.MyCircleLoss(distance="euclidean")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert again.miner == loss.miner and again.gamma == 64.0 and again.m == 0.4
    np.testing.assert_allclose(float(again(labels, x)), float(loss(labels, x)), rtol=1e-6)

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4),
                              keras.layers.UnitNormalization()])
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, labels, batch_size=24, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss).__name__ == "MyCircleLoss" and loaded.loss.miner == loss.miner


def test_the_guide_names_one_base_module():
    text = open(GUIDE).read()
    assert "keras_featreg/losses/_base.py" in text
    source = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    imports = set(re.findall(r"^from (keras_featreg[\w.]*) import", source, flags=re.M))
    assert imports == {"keras_featreg", "keras_featreg.losses", "keras_featreg.ops.masked"}
