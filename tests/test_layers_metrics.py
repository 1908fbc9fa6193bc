"""EmbeddingRegularization, attach_regularizer and the spectrum metrics/callback."""


import keras
import numpy as np
import pytest

from _helpers import saved_and_loaded_losses, to_np
from _references import ref_normalize, ref_svmax
from keras_featreg import callbacks, metrics
from keras_featreg.ops import spectral
from keras_featreg.layers import EmbeddingRegularization, attach_regularizer, detach_regularizers
from keras_featreg.regularizers import SVMax, VICReg


def _mlp():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="h1")(inputs)
    h = keras.layers.Dense(5, name="h2")(h)
    return keras.Model(inputs, h)


def test_embedding_regularization_is_identity_and_adds_penalty(rng):
    x = rng.standard_normal((10, 4)).astype("float32")
    layer = EmbeddingRegularization(SVMax(0.5))
    y = to_np(layer(x))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_allclose(float(to_np(layer.losses[0])), ref_svmax(x, 0.5), rtol=1e-5)


def test_embedding_regularization_serializes(tmp_path, rng):
    inputs = keras.Input((6,))
    out = EmbeddingRegularization(VICReg(3.0, 0.5))(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, out)
    x = rng.standard_normal((8, 6)).astype("float32")
    before, after, _ = saved_and_loaded_losses(model, x, tmp_path)
    np.testing.assert_allclose(after, before, rtol=1e-6)


def test_embedding_regularization_rejects_other_regularizers():
    with pytest.raises(ValueError, match="regularizer"):
        EmbeddingRegularization(keras.regularizers.L2(0.1))


def test_attach_to_all_and_subset(rng):
    model = _mlp()
    x = rng.standard_normal((12, 6)).astype("float32")
    names = attach_regularizer(model, SVMax(1.0))
    assert names == ["h1", "h2"]
    model(x)
    assert len(model.losses) == 2
    h1 = keras.Model(model.input, model.get_layer("h1").output)
    expected = ref_svmax(to_np(h1(x))) + ref_svmax(to_np(model(x)))
    model(x)
    np.testing.assert_allclose(float(sum(to_np(v) for v in model.losses)), expected, rtol=1e-4)
    assert detach_regularizers(model) == ["h1", "h2"]
    model(x)
    assert len(model.losses) == 0
    assert attach_regularizer(model, SVMax(1.0), layers=["h2"]) == ["h2"]
    assert attach_regularizer(model, VICReg(), layers=lambda l: l.name == "h1") == ["h1"]
    with pytest.raises(ValueError, match="overwrite"):
        attach_regularizer(model, VICReg(), layers="h2")
    assert attach_regularizer(model, VICReg(), layers="h2", overwrite=True) == ["h2"]
    with pytest.raises(ValueError, match="No layer"):
        attach_regularizer(model, SVMax(), layers="nope")


def test_attach_then_fit(rng):
    model = _mlp()
    attach_regularizer(model, SVMax(0.1), layers=keras.layers.Dense)
    model.compile(optimizer="sgd", loss="mse")
    x, y = rng.standard_normal((32, 6)).astype("float32"), rng.standard_normal((32, 5)).astype("float32")
    hist = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))


def test_mean_singular_value_and_position(rng):
    e = rng.standard_normal((30, 6))
    n = ref_normalize(e)
    s_mu = np.linalg.svd(n, compute_uv=False).sum() / 6
    np.testing.assert_allclose(float(metrics.mean_singular_value(e.astype("float32"))), s_mu, rtol=1e-5)
    lo, up = spectral.singular_value_bounds(30, 6)
    np.testing.assert_allclose(float(metrics.singular_value_position(e.astype("float32"))),
                               (s_mu - lo) / (up - lo), rtol=1e-4)
    rank_one = np.tile(n[:1], (30, 1)).astype("float32")
    np.testing.assert_allclose(float(metrics.singular_value_position(rank_one)), 0.0, atol=1e-5)


def test_collapse_statistics(rng):
    e = rng.standard_normal((50, 8))
    e[:, :3] = 0.5  # three constant dimensions
    stats = metrics.collapse_statistics(e.astype("float32"), normalize=False)
    np.testing.assert_allclose(stats["collapsed_fraction"], 3 / 8)
    np.testing.assert_allclose(stats["mean_std"], e.std(0, ddof=1).mean(), rtol=1e-5)
    assert metrics.collapse_statistics(np.ones((5, 4), "float32"))["collapsed_fraction"] == 1.0
    np.testing.assert_allclose(to_np(metrics.dimension_std(e.astype("float32"))), e.std(0, ddof=1), rtol=1e-5)


def test_spectrum_monitor_logs_into_history(rng):
    model = _mlp()
    model.compile(optimizer="sgd", loss="mse")
    x, y = rng.standard_normal((32, 6)).astype("float32"), rng.standard_normal((32, 5)).astype("float32")
    monitor = callbacks.SpectrumMonitor(x[:20])
    hist = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[monitor])
    for key in callbacks.SpectrumMonitor.KEYS:
        assert len(hist.history["val_" + key]) == 2
    emb = to_np(model.predict(x[:20], verbose=0))
    s_mu = np.linalg.svd(ref_normalize(emb), compute_uv=False).sum() / 5
    np.testing.assert_allclose(hist.history["val_s_mu"][-1], s_mu, rtol=1e-4)
    lo, up = spectral.singular_value_bounds(20, 5)
    np.testing.assert_allclose([hist.history["val_s_mu_lower"][-1], hist.history["val_s_mu_upper"][-1]],
                               [lo, up], rtol=1e-5)


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="embeddings"):
        metrics.mean_singular_value(np.ones(3, "float32"))
    with pytest.raises(ValueError, match="every"):
        callbacks.SpectrumMonitor(np.ones((3, 2)), every=0)
