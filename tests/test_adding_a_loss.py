"""The "how to add a loss" guide's example, run as written (docs/guides/adding-a-loss.md)."""

import os
import re
import sys
import types

import keras
import numpy as np
import pytest

from keras_featreg import losses, miners
from tests._helpers import jit, value_and_grad

GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                     "guides", "adding-a-loss.md")


@pytest.fixture(scope="module")
def my_losses():
    source = re.findall(r"```python\n(.*?)```", open(GUIDE).read(), flags=re.S)[0]
    module = types.ModuleType("my_losses")
    sys.modules["my_losses"] = module
    exec(compile(source, GUIDE, "exec"), module.__dict__)
    return module


def _ref(d, labels, alpha, beta, nonzero=True):
    same = labels[:, None] == labels[None, :]
    eye = np.eye(len(labels), dtype=bool)
    terms = np.where(same, np.maximum(alpha + d - beta, 0), np.maximum(alpha - d + beta, 0))
    terms = terms[~eye]
    if nonzero:
        active = terms > 0
        return terms[active].sum() / max(active.sum(), 1)
    return terms.mean()


def _batch(seed=0, b=24, d=6):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(b // 4), 4))
    x = rng.normal(size=(b, d)).astype("float32")
    return labels, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_guide_loss_matches_its_formula(my_losses):
    labels, x = _batch()
    loss = my_losses.MarginLoss(alpha=0.2, beta=1.2)

    def ref(x64):
        d = np.sqrt(((x64[:, None] - x64[None]) ** 2).sum(-1))
        return _ref(d, labels, 0.2, 1.2)

    value, grad = value_and_grad(lambda t: loss.call(labels, t), x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(value, ref(x64), rtol=1e-5)
    eps, num = 1e-6, np.zeros_like(x64)
    for i in range(x64.shape[0]):
        for j in range(x64.shape[1]):
            e = np.zeros_like(x64)
            e[i, j] = eps
            num[i, j] = (ref(x64 + e) - ref(x64 - e)) / (2 * eps)
    np.testing.assert_allclose(grad, num, atol=1e-4)
    compiled = jit(lambda t: loss.call(labels, t))
    np.testing.assert_allclose(np.asarray(compiled(x)), value, rtol=1e-5)


def test_the_guide_loss_composes_and_round_trips(my_losses, tmp_path):
    labels, x = _batch(1)
    loss = my_losses.MarginLoss(miner=miners.BalancedPairMiner(), reducer="mean")
    assert np.isfinite(float(loss(labels, x)))
    assert isinstance(losses.get("margin"), my_losses.MarginLoss)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert again.miner == loss.miner and again.alpha == 0.2
    np.testing.assert_allclose(float(again(labels, x)), float(loss(labels, x)), rtol=1e-6)

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4),
                              keras.layers.UnitNormalization()])
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, labels, batch_size=24, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss).__name__ == "MarginLoss" and loaded.loss.miner == loss.miner
