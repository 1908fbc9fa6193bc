"""Collapse measures (RankMe, alpha-ReQ, LiDAR, participation ratio, collapsed dimensions):
float64 NumPy references, published formulas (reptrix), edge cases, the Keras metrics and
the CollapseMonitor callback."""

import keras
import numpy as np
import pytest

from _helpers import numeric_grad, to_np, value_and_grad
from _references import (
    ref_alpha_req,
    ref_collapsed_dimensions,
    ref_cov_eigenvalues,
    ref_floor,
    ref_lidar,
    ref_participation_ratio,
    ref_rankme,
    ref_reptrix_get_rank,
    ref_reptrix_powerlaw,
)
from keras_featreg import callbacks, metrics

EPS64, EPS32 = 2.0**-52, 2.0**-23
# Keras 3's torch backend computes some float64 ops in float32 (keras.backend.result_type
# maps float64 to float32 outside TensorFlow: ops.maximum, ops.matmul; see test_float64.py):
# float64 agreement is asserted at 1e-9 on TensorFlow and JAX, at float32 level on torch.
TORCH = keras.backend.backend() == "torch"
RTOL64 = 1e-5 if TORCH else 1e-9
ATOL64 = 1e-6 if TORCH else 1e-12


@pytest.fixture
def x64():
    """float64 on JAX needs ``jax_enable_x64``."""
    if keras.backend.backend() == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def _f(x):
    return float(to_np(x))


def _measures(z, **kw):
    return {
        "effective_rank": _f(metrics.effective_rank(z, **kw)),
        "alpha_req": _f(metrics.alpha_req(z, fit_range=(1, 6), **kw)),
        "participation_ratio": _f(metrics.participation_ratio(z, **kw)),
        "collapsed_dimensions": _f(metrics.collapsed_dimensions(z, **kw)),
    }


def _refs(z, eps=EPS64):
    return {
        "effective_rank": ref_rankme(z),
        "alpha_req": ref_alpha_req(z, fit_range=(1, 6), eps=eps),
        "participation_ratio": ref_participation_ratio(z),
        "collapsed_dimensions": ref_collapsed_dimensions(z),
    }


@pytest.mark.parametrize("shape", [(9, 16), (40, 12)], ids=["n<d", "n>=d"])
@pytest.mark.parametrize("method", ["svd", "gram"])
def test_measures_match_float64_reference(x64, rng, shape, method):
    z = rng.standard_normal(shape) * np.linspace(2.0, 0.1, shape[1])
    got, want = _measures(z, method=method), _refs(z)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL64, atol=ATOL64, err_msg=key)
    np.testing.assert_allclose(to_np(metrics.covariance_spectrum(z, method=method)),
                               ref_cov_eigenvalues(z), rtol=RTOL64, atol=ATOL64)
    np.testing.assert_allclose(to_np(metrics.log_spectrum(z, method=method)),
                               np.log(ref_floor(ref_cov_eigenvalues(z), EPS64)), rtol=RTOL64,
                               atol=ATOL64)


def test_rank_deficient_float64(x64, rng):
    z = rng.standard_normal((30, 3)) @ rng.standard_normal((3, 10))  # rank 3
    got, want = _measures(z), _refs(z)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=max(RTOL64, 1e-7), err_msg=key)
    assert got["collapsed_dimensions"] == 7.0
    assert 2.5 < got["effective_rank"] < 3.0
    assert got["alpha_req"] > 5.0  # the floored tail drops steeply


def test_constant_and_zero_inputs_have_documented_values(x64):
    for z in (np.full((6, 4), 0.5), np.zeros((6, 4))):
        got = _measures(z)
        assert all(np.isfinite(v) for v in got.values()), got
        assert got["participation_ratio"] == 0.0
        assert got["collapsed_dimensions"] == 4.0
        assert got["alpha_req"] == 0.0
        np.testing.assert_allclose(to_np(metrics.log_spectrum(z)), np.log(1e-30))
    k, eps = 4, 1e-7
    np.testing.assert_allclose(_f(metrics.effective_rank(np.zeros((6, 4)))),
                               np.exp(-k * eps * np.log(eps)), rtol=RTOL64)
    np.testing.assert_allclose(_f(metrics.effective_rank(np.full((6, 4), 0.5))),
                               ref_rankme(np.full((6, 4), 0.5)), rtol=RTOL64)
    views = np.ones((5, 2, 3))
    np.testing.assert_allclose(_f(metrics.lidar(views)), ref_lidar(views), rtol=RTOL64)


def test_half_precision_computed_in_float32(rng):
    z = rng.standard_normal((24, 8)) * np.linspace(1.5, 0.2, 8)
    for dtype in ("float16", "bfloat16"):
        x = keras.ops.cast(z, dtype)
        z_rounded = to_np(keras.ops.cast(x, "float32")).astype(np.float64)
        value = metrics.effective_rank(x)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        got, want = _measures(x), _refs(z_rounded, eps=EPS32)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-4, atol=1e-5, err_msg=key)


def test_nonfinite_input_gives_nan(x64, rng):
    z = rng.standard_normal((10, 5))
    for bad in (np.nan, np.inf):
        zb = z.copy()
        zb[3, 2] = bad
        assert all(np.isnan(v) for v in _measures(zb).values())
        assert np.all(np.isnan(to_np(metrics.log_spectrum(zb))))
        out = metrics.collapse_measures(zb, metrics.MEASURES[:4])
        assert all(np.isnan(_f(v)) for v in out.values())
        views = np.stack([z, zb], 1)
        assert np.isnan(_f(metrics.lidar(views)))


def test_reptrix_formulas(x64, rng):
    # reptrix's get_rank is our entropy effective rank (eps = 1e-7).
    v = np.abs(rng.standard_normal(50))
    np.testing.assert_allclose(_f(metrics.entropy_effective_rank(v)), ref_reptrix_get_rank(v),
                               rtol=RTOL64)
    # alpha-ReQ with reptrix's range (5, 100) and 1/i weights, on a power-law spectrum.
    z = rng.standard_normal((160, 120)) * np.arange(1, 121) ** -0.75
    lam = ref_cov_eigenvalues(z)
    want = ref_reptrix_powerlaw(lam / lam.sum(), np.arange(5, 100))
    np.testing.assert_allclose(_f(metrics.alpha_req(z)), want, rtol=RTOL64)
    np.testing.assert_allclose(want, ref_alpha_req(z), rtol=RTOL64)


@pytest.mark.parametrize("q", [2, 3])
def test_lidar_matches_reference(x64, rng, q):
    base = rng.standard_normal((20, 6)) * np.linspace(2.0, 0.2, 6)
    views = np.stack([base + 0.3 * rng.standard_normal(base.shape) for _ in range(q)], 1)
    want = ref_lidar(views)
    np.testing.assert_allclose(_f(metrics.lidar(views)), want, rtol=RTOL64)
    np.testing.assert_allclose(_f(metrics.lidar([views[:, i] for i in range(q)])), want, rtol=RTOL64)
    np.testing.assert_allclose(_f(metrics.lidar(views, delta=1e-2)), ref_lidar(views, 1e-2),
                               rtol=RTOL64)
    f32 = _f(metrics.lidar(views.astype("float32")))
    np.testing.assert_allclose(f32, want, rtol=1e-3)


def test_collapse_measures_share_one_spectrum(x64, rng):
    z = rng.standard_normal((12, 7))
    views = [z, z + 0.1 * rng.standard_normal(z.shape)]
    out = metrics.collapse_measures(z, metrics.MEASURES, views=views, fit_range=(1, 6))
    want = _refs(z)
    want["lidar"] = ref_lidar(np.stack(views, 1))
    assert list(out) == list(metrics.MEASURES)
    for key in want:
        np.testing.assert_allclose(_f(out[key]), want[key], rtol=RTOL64, atol=ATOL64, err_msg=key)
    only_views = metrics.collapse_measures(None, ("effective_rank",), views=views)
    np.testing.assert_allclose(_f(only_views["effective_rank"]), ref_rankme(z), rtol=RTOL64)


def test_effective_rank_gradient(x64, rng):
    z = rng.standard_normal((6, 4))
    _, grad = value_and_grad(lambda x: metrics.effective_rank(x), z)
    num = numeric_grad(ref_rankme, z)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)
    for method in ("svd", "gram"):
        for degenerate in (np.zeros((6, 4)), np.full((6, 4), 0.3),
                           rng.standard_normal((6, 1)) @ rng.standard_normal((1, 4))):
            value, grad = value_and_grad(
                lambda x, m=method: metrics.effective_rank(x, method=m), degenerate)
            assert np.isfinite(value) and np.all(np.isfinite(grad)), method


def test_bad_input():
    with pytest.raises(ValueError, match=r"Received: embeddings.shape=\(3,\)"):
        metrics.effective_rank(np.ones(3, "float32"))
    with pytest.raises(ValueError, match="embeddings.shape=.2, 3, 4"):
        metrics.participation_ratio(np.ones((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="at least 2 samples.*embeddings.shape=.1, 4"):
        metrics.alpha_req(np.ones((1, 4), "float32"))
    with pytest.raises(ValueError, match="at least 2 views.*1 view"):
        metrics.lidar([np.ones((4, 3))])
    with pytest.raises(ValueError, match=r"q >= 2.*views.shape=\(4, 1, 3\)"):
        metrics.lidar(np.ones((4, 1, 3)))
    with pytest.raises(ValueError, match=r"views\[0\].*views\[1\].*same shape"):
        metrics.lidar([np.ones((4, 3)), np.ones((5, 3))])
    with pytest.raises(ValueError, match="at least 2 samples.*views.shape"):
        metrics.lidar(np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="method"):
        metrics.effective_rank(np.ones((4, 3)), method="qr")
    with pytest.raises(ValueError, match="fit_range"):
        metrics.alpha_req(np.ones((4, 3)), fit_range=(3, 1))
    with pytest.raises(ValueError, match="measures"):
        metrics.collapse_measures(np.ones((4, 3)), ("rank",))
    with pytest.raises(ValueError, match="views"):
        metrics.collapse_measures(np.ones((4, 3)), ("lidar",))
    with pytest.raises(ValueError, match="dtype"):
        metrics.effective_rank(np.ones((4, 3), "int32"))


# ---- Keras metrics and the callback ----------------------------------------------------


def _model(d_in=6, d_out=4, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((d_in,)), keras.layers.Dense(d_out, name="emb")])


def test_keras_metric_in_compile_and_config(rng):
    x = rng.standard_normal((32, 6)).astype("float32")
    model = _model()
    model.compile(optimizer="sgd", loss="mse",
                  metrics=[metrics.EffectiveRank(), metrics.ParticipationRatio(average=False)])
    logs = model.evaluate(x, np.zeros((32, 4), "float32"), batch_size=32, verbose=0,
                          return_dict=True)
    emb = to_np(model.predict(x, verbose=0)).astype(np.float64)
    np.testing.assert_allclose(logs["effective_rank"], ref_rankme(emb), rtol=1e-4)
    np.testing.assert_allclose(logs["participation_ratio"], ref_participation_ratio(emb),
                               rtol=1e-4)
    m = metrics.CollapsedDimensions(threshold=1e-3)
    clone = metrics.CollapsedDimensions.from_config(m.get_config())
    assert clone.measure == "collapsed_dimensions" and clone.measure_kwargs == {"threshold": 1e-3}
    lid = metrics.LiDAR()
    views = np.stack([emb, emb + 0.1], 1)
    lid.update_state(None, views)
    np.testing.assert_allclose(_f(lid.result()), ref_lidar(views.astype("float32")), rtol=1e-3)
    assert isinstance(keras.metrics.deserialize(keras.metrics.serialize(m)),
                      metrics.CollapsedDimensions)


def test_collapse_monitor_logs_into_history(rng):
    x = rng.standard_normal((40, 6)).astype("float32")
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    monitor = callbacks.CollapseMonitor(
        x[:24], measures=("effective_rank", "alpha_req", "collapsed_dimensions"),
        fit_range=(0, 4), every=2)
    hist = model.fit(x, np.zeros((40, 4), "float32"), epochs=3, batch_size=20, verbose=0,
                     callbacks=[monitor])
    for key in ("val_effective_rank", "val_alpha_req", "val_collapsed_dimensions"):
        assert len(hist.history[key]) == 2  # epochs 2 and 3 (the last)
    emb = to_np(model.predict(x[:24], verbose=0)).astype(np.float64)
    np.testing.assert_allclose(hist.history["val_effective_rank"][-1], ref_rankme(emb),
                               rtol=1e-4)
    assert [h["epoch"] for h in monitor.history] == [1, 2]


def test_collapse_monitor_stops_and_restores_best_weights(rng):
    x = rng.standard_normal((32, 6)).astype("float32")
    model = _model()
    # A large learning rate towards a constant target collapses the embedding; the check
    # is the stopping logic: threshold above any reachable RankMe stops after patience + 1.
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    monitor = callbacks.CollapseMonitor(x, measures="effective_rank", threshold=100.0,
                                        patience=1, restore_best_weights=True)
    hist = model.fit(x, np.ones((32, 4), "float32"), epochs=6, batch_size=32, verbose=0,
                     callbacks=[monitor])
    assert len(hist.history["loss"]) == 2 and monitor.stopped_epoch == 1
    values = hist.history["val_effective_rank"]
    assert monitor.best == max(values) and monitor.best_epoch == int(np.argmax(values))
    best = monitor.best_weights
    for w, b in zip(model.get_weights(), best):
        np.testing.assert_array_equal(w, b)
    # mode "max" for collapsed dimensions: no stop when below the threshold.
    model2 = _model(seed=1)
    model2.compile(optimizer="sgd", loss="mse")
    mon2 = callbacks.CollapseMonitor(x, measures="collapsed_dimensions", threshold=0.5)
    assert mon2.mode == "max"
    h2 = model2.fit(x, np.zeros((32, 4), "float32"), epochs=2, verbose=0, callbacks=[mon2])
    assert len(h2.history["loss"]) == 2 and mon2.stopped_epoch is None


def test_collapse_monitor_two_views_and_steps(rng):
    x = rng.standard_normal((24, 6)).astype("float32")
    views = [x, x + 0.05 * rng.standard_normal(x.shape).astype("float32")]
    model = _model()
    model.compile(optimizer="sgd", loss="mse",
                  metrics=[metrics.EffectiveRank(average=False)])
    monitor = callbacks.CollapseMonitor(views=views, measures=("lidar", "effective_rank"),
                                        every_steps=2, monitor="effective_rank",
                                        threshold=0.5)
    hist = model.fit(x, np.zeros((24, 4), "float32"), epochs=2, batch_size=8, verbose=0,
                     callbacks=[monitor])
    assert len(hist.history["val_lidar"]) == 2 and len(hist.history["loss"]) == 2
    emb = [to_np(model.predict(v, verbose=0)).astype(np.float64) for v in views]
    np.testing.assert_allclose(hist.history["val_lidar"][-1], ref_lidar(np.stack(emb, 1)),
                               rtol=1e-3)
    assert [s["step"] for s in monitor.step_history] == [2, 4, 6]
    assert all(s["effective_rank"] > 1.0 for s in monitor.step_history)


def test_collapse_monitor_bad_arguments():
    x = np.ones((4, 6), "float32")
    with pytest.raises(ValueError, match="views"):
        callbacks.CollapseMonitor(x, measures=("lidar",))
    with pytest.raises(ValueError, match="views"):
        callbacks.CollapseMonitor(views=[x])
    with pytest.raises(ValueError, match="measures"):
        callbacks.CollapseMonitor(x, measures=("rankme",))
    with pytest.raises(ValueError, match="mode"):
        callbacks.CollapseMonitor(x, mode="up")
    with pytest.raises(ValueError, match="every"):
        callbacks.CollapseMonitor(x, every=0)
    with pytest.raises(ValueError, match="Received: x=None"):
        callbacks.CollapseMonitor()
