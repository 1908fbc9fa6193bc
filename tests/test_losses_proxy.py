"""ProxyAnchorLoss, ArcFaceLoss, CosFaceLoss and their ProxyHead (issue 13).

Parity with pytorch-metric-learning 2.9 (tests/fixtures/pml_parity.npz, float64 torch) in
float32, gradients w.r.t. the embeddings AND the class weights; a float64 NumPy reference;
XLA == eager; degenerate and non-finite inputs; the Keras contract (config, ``get``,
``model.fit`` under ``jit_compile`` False/True, ``.keras`` save/load).
"""

import json
import math
import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_featreg
from keras_featreg import losses
from keras_featreg.layers import ProxyHead, embedding_model

from _helpers import jit, numeric_grad, to_np, value_and_grad

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pml_parity.npz")
CLASSES = {
    "ProxyAnchorLoss": (losses.ProxyAnchorLoss, losses.proxy_anchor_loss_from_embeddings),
    "ArcFaceLoss": (losses.ArcFaceLoss, losses.arcface_loss_from_embeddings),
    "CosFaceLoss": (losses.CosFaceLoss, losses.cosface_loss_from_embeddings),
}
TOL = 1e-5


@pytest.fixture
def float64():
    """float64 computations: JAX needs ``jax_enable_x64``; Keras's torch backend has none."""
    if keras.backend.backend() == "torch":
        pytest.skip("Keras's torch backend computes float64 in float32")
    if keras.backend.backend() == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def _fixture():
    data = np.load(FIXTURES)
    manifest = json.loads(str(data["manifest"]))
    cases = [c for c in manifest["cases"] if c["ours"]["class"] in CLASSES]
    return data, cases


DATA, CASES = _fixture()
EXACT = [c for c in CASES if c["relation"] == "exact"]
DIFFERS = [c for c in CASES if c["relation"] != "exact"]


def _kwargs(case):
    kwargs = dict(case["ours"]["kwargs"])
    kwargs.pop("num_classes")
    kwargs.pop("embedding_size")
    return kwargs


def _value_and_grads(fn, labels, embeddings, proxies, dtype="float32", jit_=False, **kwargs):
    """(value, grad embeddings, grad proxies): both stacked in one (b + C, d) input."""
    b = embeddings.shape[0]
    packed = np.concatenate([embeddings, proxies]).astype(dtype)

    def f(x):
        return fn(labels, x[:b], x[b:], **kwargs)

    value, grad = value_and_grad(f, packed, jit=jit_)
    return float(value), grad[:b].astype(np.float64), grad[b:].astype(np.float64)


# ----------------------------------------------------------------------------- parity


def test_fixture_has_every_case():
    names = {c["ours"]["class"] for c in CASES}
    assert names == set(CLASSES)
    assert len(EXACT) == 30 and [c["name"] for c in DIFFERS] == [
        "arcface_equal_to_class_weight_b6_s16"]


@pytest.mark.parametrize("case", EXACT, ids=[c["name"] for c in EXACT])
def test_pml_parity(case):
    name = case["name"]
    _, fn = CLASSES[case["ours"]["class"]]
    value, grad, grad_proxies = _value_and_grads(
        fn, DATA[name + "/labels"], DATA[name + "/embeddings"], DATA[name + "/proxies"],
        **_kwargs(case))
    np.testing.assert_allclose(value, DATA[name + "/value"], rtol=0, atol=TOL)
    np.testing.assert_allclose(grad, DATA[name + "/grad"], rtol=0, atol=TOL)
    np.testing.assert_allclose(grad_proxies, DATA[name + "/grad_proxies"], rtol=0, atol=TOL)


@pytest.mark.parametrize("case", EXACT[:3] + EXACT[9:11] + EXACT[20:22],
                         ids=lambda c: c["name"])
def test_pml_parity_through_the_loss_class(case):
    """The class on the head's cosines = the function on (embeddings, proxies)."""
    name = case["name"]
    cls, _ = CLASSES[case["ours"]["class"]]
    loss = cls(**case["ours"]["kwargs"])
    head = loss.head()
    embeddings = DATA[name + "/embeddings"]
    head.build(embeddings.shape)
    head.proxies.assign(DATA[name + "/proxies"])
    value = float(to_np(loss(DATA[name + "/labels"], head(embeddings))))
    np.testing.assert_allclose(value, DATA[name + "/value"], rtol=0, atol=TOL)


def test_arcface_row_equal_to_class_weight_documented_difference(float64):
    """PML's d acos / dc is infinite at c = 1 (NaN gradients); ours is finite everywhere.

    The cosine of a row equal to its weight rounds to 1 - O(u), where sqrt(1 - c^2) moves
    by O(sqrt(u)) (times scale sin m): float64 value and every finite PML gradient entry
    within 1e-7 (measured 1e-13 on TF, 2e-9 on JAX), float32 within 5e-4 (1.3e-4).
    """
    case = DIFFERS[0]
    name = case["name"]
    expected_grad, expected_gp = DATA[name + "/grad"], DATA[name + "/grad_proxies"]
    assert not np.isfinite(expected_grad).all() and not np.isfinite(expected_gp).all()
    args = (losses.arcface_loss_from_embeddings, DATA[name + "/labels"],
            DATA[name + "/embeddings"], DATA[name + "/proxies"])
    for dtype, tol in (("float64", 1e-7), ("float32", 5e-4)):
        value, grad, grad_proxies = _value_and_grads(*args, dtype=dtype, **_kwargs(case))
        assert np.isfinite(grad).all() and np.isfinite(grad_proxies).all()
        np.testing.assert_allclose(value, DATA[name + "/value"], rtol=0, atol=tol)
        finite = np.isfinite(expected_grad)
        np.testing.assert_allclose(grad[finite], expected_grad[finite], rtol=0, atol=tol)
        finite = np.isfinite(expected_gp)
        np.testing.assert_allclose(grad_proxies[finite], expected_gp[finite], rtol=0, atol=tol)


# ---------------------------------------------------------------- float64 NumPy reference


def _ref_cos(e, p):
    en = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-6)
    pn = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-6)
    return en @ pn.T


def ref_proxy_anchor(labels, e, p, margin=0.1, alpha=32.0):
    cos = _ref_cos(e, p)
    C = p.shape[0]
    pos = neg = 0.0
    present = 0
    for c in range(C):
        mine = labels == c
        if mine.any():
            present += 1
            pos += np.log1p(np.exp(-alpha * (cos[mine, c] - margin)).sum())
        neg += np.log1p(np.exp(alpha * (cos[~mine, c] + margin)).sum())
    return pos / max(present, 1) + neg / C


def _ref_ce(logits, labels):
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def ref_arcface(labels, e, p, margin=28.6, scale=64.0):
    cos = _ref_cos(e, p)
    m = math.radians(margin)
    c = np.clip(cos[np.arange(len(labels)), labels], -1, 1)
    theta = np.arccos(c)
    target = np.where(theta <= math.pi - m, np.cos(theta + m), c - m * math.sin(m))
    logits = cos.copy()
    logits[np.arange(len(labels)), labels] = target
    return _ref_ce(scale * logits, labels)


def ref_cosface(labels, e, p, margin=0.35, scale=64.0):
    cos = _ref_cos(e, p)
    logits = cos.copy()
    logits[np.arange(len(labels)), labels] -= margin
    return _ref_ce(scale * logits, labels)


REFS = {
    "ProxyAnchorLoss": (ref_proxy_anchor, {"margin": 0.2, "alpha": 16.0}),
    "ArcFaceLoss": (ref_arcface, {"margin": 20.0, "scale": 16.0}),
    "CosFaceLoss": (ref_cosface, {"margin": 0.3, "scale": 16.0}),
}


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_float64_reference(cls_name, seed, float64):
    rng = np.random.default_rng(seed)
    b, C, d = 12, 7, 5
    labels = rng.integers(0, C, b)
    e, p = rng.normal(size=(b, d)), rng.normal(size=(C, d))
    ref, kwargs = REFS[cls_name]
    fn = CLASSES[cls_name][1]
    expected = ref(labels, e, p, **kwargs)
    value, grad, grad_p = _value_and_grads(fn, labels, e, p, dtype="float64", **kwargs)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(lambda x: ref(labels, x, p, **kwargs), e),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_p, numeric_grad(lambda x: ref(labels, e, x, **kwargs), p),
                               rtol=1e-5, atol=1e-6)
    value32 = float(to_np(fn(labels, e.astype("float32"), p.astype("float32"), **kwargs)))
    np.testing.assert_allclose(value32, expected, rtol=1e-5)


def test_arcface_fallback_branch_matches_reference(float64):
    """Rows near -W_y take ``c - m sin m``; both branches against the reference."""
    rng = np.random.default_rng(3)
    p = rng.normal(size=(4, 6))
    labels = np.array([0, 1, 2, 3, 0, 1])
    e = np.concatenate([-p + 0.05 * rng.normal(size=p.shape), p[:2]])
    value = float(to_np(losses.arcface_loss_from_embeddings(labels, e, p, scale=8.0)))
    np.testing.assert_allclose(value, ref_arcface(labels, e, p, scale=8.0), rtol=1e-10)


# ----------------------------------------------------------------------- XLA, dtypes


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_jit_equals_eager(cls_name):
    case = next(c for c in EXACT if c["ours"]["class"] == cls_name and "random" in c["name"])
    name = case["name"]
    fn = CLASSES[cls_name][1]
    args = (DATA[name + "/labels"], DATA[name + "/embeddings"], DATA[name + "/proxies"])
    eager = _value_and_grads(fn, *args, **_kwargs(case))
    compiled = _value_and_grads(fn, *args, jit_=True, **_kwargs(case))
    kwargs = _kwargs(case)
    jitted_value = to_np(jit(lambda y, x, w: fn(y, x, w, **kwargs))(*args))
    np.testing.assert_allclose(jitted_value, eager[0], rtol=1e-6)
    # float32: XLA fuses (and rounds) differently from the op-by-op path; alpha = 32
    # magnifies the rounding, so the tolerance is a few ulps of the gradient's scale.
    for a, b in zip(eager, compiled):
        scale = max(1.0, float(np.max(np.abs(a))))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=8 * np.finfo(np.float32).eps * scale)


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_half_precision_computes_in_float32_and_float64_stays(cls_name, float64):
    cls = CLASSES[cls_name][0]
    loss = cls(num_classes=3, embedding_size=2)
    cos = np.array([[0.9, 0.1, -0.2], [0.0, 0.5, 0.3]])
    v64 = to_np(loss.call(np.array([0, 1]), cos))
    v16 = to_np(loss.call(np.array([0, 1]), cos.astype("float16")))
    assert v64.dtype == np.float64 and v16.dtype == np.float32
    np.testing.assert_allclose(v16, v64, rtol=1e-3)


# -------------------------------------------------------------- degenerate and non-finite


DEGENERATE = {
    "b1": (np.array([2]), np.ones((1, 4))),
    "zeros": (np.array([0, 1, 1]), np.zeros((3, 4))),
    "one_class": (np.array([1, 1, 1, 1]), np.tile([[1.0, 2.0, 0.0, 0.0]], (4, 1))),
    "on_proxy": (np.array([0, 1, 2]), None),
}


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_degenerate_batches_are_finite(cls_name, kind, float64):
    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, 4))
    labels, e = DEGENERATE[kind]
    if e is None:
        e = p.copy()  # rows exactly on their proxies (cos = 1)
    fn = CLASSES[cls_name][1]
    for dtype in ("float32", "float64"):
        value, grad, grad_p = _value_and_grads(fn, labels, e, p, dtype=dtype)
        assert np.isfinite(value) and np.isfinite(grad).all() and np.isfinite(grad_p).all()
    # zero proxies too
    value, grad, grad_p = _value_and_grads(fn, labels, e, np.zeros_like(p))
    assert np.isfinite(value) and np.isfinite(grad).all() and np.isfinite(grad_p).all()


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_nonfinite_input_and_bad_label_give_nan(cls_name):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0])
    e, p = rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(3, 3)).astype("float32")
    cls, fn = CLASSES[cls_name]
    for bad in (np.nan, np.inf):
        e_bad = e.copy()
        e_bad[1, 2] = bad
        assert np.isnan(to_np(fn(labels, e_bad, p)))
        p_bad = p.copy()
        p_bad[0, 0] = bad
        assert np.isnan(to_np(fn(labels, e, p_bad)))
    cos = to_np(keras_featreg.ops.pairwise.cosine_similarity_matrix(e, p))
    cos_bad = cos.copy()
    cos_bad[0, 0] = np.nan
    loss = cls(num_classes=3, embedding_size=3)
    assert np.isnan(to_np(loss(labels, cos_bad)))
    assert np.isfinite(to_np(loss(labels, cos)))
    # a label outside [0, num_classes) cannot raise under jit: NaN
    assert np.isnan(to_np(loss(np.array([0, 1, 3, 0]), cos)))
    assert np.isnan(to_np(loss(np.array([0, -1, 2, 0]), cos)))


# ---------------------------------------------------------------------- arguments, config


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_bad_arguments(cls_name):
    cls = CLASSES[cls_name][0]
    second = "alpha" if cls_name == "ProxyAnchorLoss" else "scale"
    for kwargs in ({"num_classes": 0}, {"num_classes": 2.5}, {"num_classes": True},
                   {"num_classes": 3, "embedding_size": 0}, {"num_classes": 3, "margin": -1.0},
                   {"num_classes": 3, second: 0.0}, {"num_classes": 3, second: float("inf")},
                   {"num_classes": 3, "reduction": "none"}):
        with pytest.raises(ValueError, match="Received:"):
            cls(**kwargs)
    loss = cls(num_classes=3, embedding_size=4)
    with pytest.raises(ValueError, match=r"loss\.head\(\)"):
        loss(np.array([0, 1]), np.zeros((2, 4)))  # embeddings instead of the head's cosines
    with pytest.raises(ValueError, match="Received:"):
        loss(np.array([0, 1, 2]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="sample_weight"):
        loss(np.array([0, 1]), np.zeros((2, 3)), sample_weight=np.ones(2))
    with pytest.raises(ValueError, match="Received:"):
        loss(np.array([0, 1]), np.zeros((2, 3), "int32"))
    with pytest.raises(ValueError, match="Received:"):
        CLASSES[cls_name][1](np.array([0, 1]), np.zeros((2, 4)), np.zeros((3, 5)))


def test_get_by_name():
    a = losses.get("proxy_anchor", num_classes=5, embedding_size=8)
    assert isinstance(a, losses.ProxyAnchorLoss) and (a.num_classes, a.embedding_size) == (5, 8)
    for name, cls in (("ProxyAnchorLoss", losses.ProxyAnchorLoss),
                      ("proxy_anchor_loss", losses.ProxyAnchorLoss),
                      ("arcface", losses.ArcFaceLoss), ("ArcFaceLoss", losses.ArcFaceLoss),
                      ("arcface_loss", losses.ArcFaceLoss), ("cosface", losses.CosFaceLoss),
                      ("cosface_loss", losses.CosFaceLoss), ("CosFaceLoss", losses.CosFaceLoss)):
        assert type(losses.get(name, num_classes=4)) is cls


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_config_round_trip(cls_name):
    cls = CLASSES[cls_name][0]
    second = "alpha" if cls_name == "ProxyAnchorLoss" else "scale"
    loss = cls(num_classes=7, embedding_size=16, margin=0.3, name="x", **{second: 12.0})
    config = loss.get_config()
    assert {k: config[k] for k in ("num_classes", "embedding_size", "margin", second)} == {
        "num_classes": 7, "embedding_size": 16, "margin": 0.3, second: 12.0}
    again = cls.from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is cls and restored.get_config() == config
    assert type(losses.get(keras.saving.serialize_keras_object(loss))) is cls


def test_bounds():
    with pytest.raises(ValueError, match="Received:"):
        losses.ProxyAnchorLoss(3).bounds(1)
    rng = np.random.default_rng(0)
    for cls_name, (cls, fn) in CLASSES.items():
        loss = cls(num_classes=5, embedding_size=3, margin=0.2)
        lower, upper = loss.bounds(16)
        assert 0.0 == lower < upper < np.inf
        for _ in range(3):
            labels = rng.integers(0, 5, 16)
            e, p = rng.normal(size=(16, 3)), rng.normal(size=(5, 3))
            assert lower <= float(to_np(fn(labels, e, p, margin=0.2))) <= upper
        # the worst case: every row opposite its own proxy, on the others
        p = np.tile([[1.0, 0.0, 0.0]], (5, 1))
        p[0] = -1.0 * p[0]
        labels = np.zeros(16, int)
        worst = float(to_np(fn(labels, np.tile([[1.0, 0.0, 0.0]], (16, 1)), p, margin=0.2)))
        assert worst <= upper * (1 + 1e-6)  # float32; CosFace's bound is attained here
    assert losses.CosFaceLoss(1).bounds(4) == (0.0, 0.0)


# ----------------------------------------------------------------------- the head layer


def test_head_layer():
    loss = losses.ProxyAnchorLoss(num_classes=400, embedding_size=64)
    head = loss.head(name="proxies")
    assert isinstance(head, ProxyHead) and head.name == "proxies"
    out = head(np.random.default_rng(0).normal(size=(5, 64)).astype("float32"))
    assert tuple(out.shape) == (5, 400) and np.abs(to_np(out)).max() <= 1.0 + 1e-6
    std = to_np(head.proxies).std()
    np.testing.assert_allclose(std, math.sqrt(2.0 / 400), rtol=0.05)  # kaiming fan_out (C)
    arc = losses.ArcFaceLoss(num_classes=100, embedding_size=64).head()
    arc.build((None, 64))
    np.testing.assert_allclose(to_np(arc.proxies).std(), 1.0, rtol=0.05)  # PML's normal_
    with pytest.raises(ValueError, match="Received:"):
        losses.CosFaceLoss(3, embedding_size=8).head()(np.zeros((2, 4), "float32"))
    inferred = losses.CosFaceLoss(3).head()
    inferred(np.zeros((2, 4), "float32"))
    assert tuple(inferred.proxies.shape) == (3, 4)
    assert keras_featreg.layers.ProxyHead is ProxyHead
    restored = ProxyHead.from_config(head.get_config())
    assert restored.num_classes == 400 and restored.embedding_size == 64


def _model(loss, svmax=False, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    regularizer = keras_featreg.SVMax(1.0) if svmax else None
    embedding = keras.layers.Dense(4, activity_regularizer=regularizer, name="embedding")(inputs)
    return keras.Model(inputs, loss.head(name="head")(embedding))


def _data(n=24, num_classes=4):
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(num_classes), n // num_classes)
    x = rng.normal(size=(n, 6)).astype("float32") + y[:, None].astype("float32")
    return x, y


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_model_fit_trains_the_proxies(cls_name, jit_compile):
    loss = CLASSES[cls_name][0](num_classes=4, embedding_size=4)
    model = _model(loss)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=jit_compile)
    before = to_np(model.get_layer("head").proxies).copy()
    x, y = _data()
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"]).all()
    after = to_np(model.get_layer("head").proxies)
    assert np.abs(after - before).max() > 0  # 3 steps moved the proxies
    retrieval = embedding_model(model)
    assert tuple(retrieval.output.shape) == (None, 4)
    np.testing.assert_allclose(to_np(retrieval(x)), to_np(model.get_layer("embedding")(x)),
                               rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_svmax_on_the_embedding_trains_with_a_proxy_loss(jit_compile):
    loss = losses.ProxyAnchorLoss(num_classes=4, embedding_size=4)
    model = _model(loss, svmax=True)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=jit_compile)
    x, y = _data()
    model(x[:8])
    assert len(model.losses) == 1
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_keras_save_load_round_trip(cls_name, tmp_path):
    loss = CLASSES[cls_name][0](num_classes=4, embedding_size=4, margin=0.2)
    model = _model(loss)
    model.compile(optimizer="adam", loss=loss)
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_np(loaded.get_layer("head").proxies),
                                  to_np(model.get_layer("head").proxies))
    np.testing.assert_allclose(to_np(loaded.predict(x, verbose=0)),
                               to_np(model.predict(x, verbose=0)), rtol=1e-6)
    restored = loaded.loss
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(x, y, batch_size=24, verbose=0),
                               model.evaluate(x, y, batch_size=24, verbose=0), rtol=1e-6)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # keeps training after load
    np.testing.assert_allclose(to_np(embedding_model(loaded)(x)).shape, (24, 4))


def test_embedding_model_needs_one_head():
    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match="Received:"):
        embedding_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    assert ops.shape(embedding_model(keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2), ProxyHead(5)]))(np.zeros((1, 3))))[-1] == 2
