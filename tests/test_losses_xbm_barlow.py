"""BarlowTwinsLoss and CrossBatchMemory (+ EmbeddingMemory): references, PML parity, fit, saving."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_featreg import losses, reducers
from keras_featreg.layers import EmbeddingMemory
from keras_featreg.ops.pairwise import l2_normalize
from tests._helpers import jit, numeric_grad, to_np, value_and_grad

BACKEND = keras.backend.backend()
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pml_parity.npz")
TOL = 1e-5


# =============================================================== Barlow Twins: reference

def ref_barlow(za, zb, lam=0.0051, eps=1e-5):
    """facebookresearch/barlowtwins main.py in float64: BatchNorm1d(affine=False), c / N."""
    za, zb = np.asarray(za, np.float64), np.asarray(zb, np.float64)
    n = za.shape[0]

    def bn(z):
        return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)  # biased variance

    c = bn(za).T @ bn(zb) / n
    on = ((np.diag(c) - 1.0) ** 2).sum()
    off = (c ** 2).sum() - (np.diag(c) ** 2).sum()
    return on + lam * off


@pytest.mark.parametrize("n,d,lam", [(16, 4, 0.0051), (8, 12, 0.1), (32, 3, 0.0), (2, 5, 1.0)])
def test_barlow_matches_float64_reference(rng, n, d, lam):
    za = rng.normal(size=(n, d)).astype("float32")
    zb = (za + 0.5 * rng.normal(size=(n, d))).astype("float32")
    loss = losses.BarlowTwinsLoss(lambda_=lam)
    va, ga = value_and_grad(lambda x: loss(x, zb), za)
    vb, gb = value_and_grad(lambda x: loss(za, x), zb)
    ref = ref_barlow(za, zb, lam)
    scale = max(1.0, abs(ref))
    assert abs(float(va) - ref) <= TOL * scale and abs(float(vb) - ref) <= TOL * scale
    np.testing.assert_allclose(ga, numeric_grad(lambda x: ref_barlow(x, zb, lam), za), atol=TOL * scale)
    np.testing.assert_allclose(gb, numeric_grad(lambda x: ref_barlow(za, x, lam), zb), atol=TOL * scale)


def test_barlow_float64_stays_float64(rng):
    if BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX without x64 has no float64")
    if BACKEND == "torch":
        pytest.skip("Keras 3's torch backend computes float64 in float32 (keras.backend.result_type)")
    za, zb = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    value = losses.barlow_twins_loss(za, zb)
    assert keras.backend.standardize_dtype(value.dtype) == "float64"
    assert abs(float(value) - ref_barlow(za, zb)) < 1e-10


def test_barlow_jit_equals_eager(rng):
    za, zb = rng.normal(size=(10, 6)).astype("float32"), rng.normal(size=(10, 6)).astype("float32")
    loss = losses.BarlowTwinsLoss()
    eager = float(loss(za, zb))
    compiled = float(jit(lambda a, b: loss(a, b))(za, zb))
    assert abs(eager - compiled) < 1e-5


@pytest.mark.parametrize("case", ["b1", "identical", "zeros"])
def test_barlow_degenerate_finite(case):
    d = 4
    za = {"b1": np.ones((1, d)), "identical": np.tile([[0.3, -1.0, 2.0, 0.5]], (5, 1)),
          "zeros": np.zeros((3, d))}[case].astype("float32")
    loss = losses.BarlowTwinsLoss()
    value, grad = value_and_grad(lambda x: loss(x, za), za)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert abs(float(value) - d) < 1e-5  # C = 0: on-diagonal sum d, no off-diagonal


def test_barlow_nan_and_half_precision(rng):
    za = rng.normal(size=(6, 3)).astype("float32")
    bad = za.copy()
    bad[2, 1] = np.nan
    assert np.isnan(float(losses.BarlowTwinsLoss()(bad, za)))
    assert np.isnan(float(losses.barlow_twins_loss(za, np.where(bad > 1e9, 0, np.inf * bad))))
    half = za.astype("float16")
    v16 = losses.barlow_twins_loss(half, half[::-1])
    assert keras.backend.standardize_dtype(v16.dtype) == "float32"
    assert abs(float(v16) - ref_barlow(half.astype(np.float32), half[::-1].astype(np.float32))) < 1e-4


def test_barlow_contract_config_get():
    loss = losses.BarlowTwinsLoss(lambda_=0.01, epsilon=1e-3)
    z = np.ones((4, 2), "float32")
    with pytest.raises(ValueError, match="sample_weight"):
        loss(z, z, sample_weight=np.ones(4))
    with pytest.raises(ValueError, match="Received: reduction"):
        losses.BarlowTwinsLoss(reduction="sum")
    with pytest.raises(ValueError, match="Received: lambda_"):
        losses.BarlowTwinsLoss(lambda_=-1.0)
    with pytest.raises(ValueError, match="Received: epsilon"):
        losses.BarlowTwinsLoss(epsilon=0.0)
    with pytest.raises(ValueError, match="Received: cross_replica"):
        losses.BarlowTwinsLoss(cross_replica="yes")
    with pytest.raises(ValueError, match="z_b"):
        loss(z, np.ones((3, 2), "float32"))
    clone = losses.BarlowTwinsLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert again.get_config() == loss.get_config()
    for name in ("barlow_twins", "barlow_twins_loss", "BarlowTwinsLoss"):
        assert isinstance(losses.get(name), losses.BarlowTwinsLoss)
    assert loss.bounds(64) is None
    assert losses.barlow_twins_loss_bounds(8, 0.0051) == (0.0, 32 + 0.0051 * 56)


def test_barlow_within_bounds(rng):
    za = rng.normal(size=(7, 5)).astype("float32")
    low, high = losses.barlow_twins_loss_bounds(5, 1.0)
    for zb in (za, -za, rng.normal(size=(7, 5)).astype("float32")):
        assert low <= float(losses.barlow_twins_loss(za, zb, lambda_=1.0)) <= high


# ================================================================ XBM: PML fixtures

class PMLContrastive(losses.ContrastiveLoss):
    """PML's ContrastiveLoss(pos_margin=0, neg_margin=1) reduction: AvgNonZero(pos) + AvgNonZero(neg).

    Test-only: our ContrastiveLoss averages positive and negative pairs jointly (the
    SVMax paper's eq. 6); PML reduces each part separately. Swapping only the reduction
    isolates the cross-batch-memory machinery for the parity check.
    """

    def compute_loss(self, matrix, positive, negative, mined):
        avg = reducers.AvgNonZeroReducer()
        return avg(matrix, positive) + avg(ops.relu(self.margin - matrix), negative)


def _fixture_cases():
    data = np.load(FIXTURES)
    manifest = json.loads(str(data["manifest"]))["cases"]
    return data, {c["name"]: c for c in manifest if c["name"].startswith("xbm_")}


def _new_xbm(inner, d, m):
    xbm = losses.CrossBatchMemory(inner, embedding_size=d, memory_size=m)
    xbm.memory.build((None, d))
    return xbm


def _run_steps(xbm, steps, normalize):
    out = []
    for y, x in steps:
        out.append(value_and_grad(lambda e: xbm(y, l2_normalize(e) if normalize else e), x))
    return out


@pytest.mark.parametrize("name", ["xbm_contrastive_d8", "xbm_triplet_d32",
                                  "xbm_contrastive_nonorm_d8", "xbm_triplet_nonorm_d8"])
def test_xbm_pml_parity(name):
    """Values and gradients (w.r.t. the raw batch, through l2_normalize where PML
    normalizes) of every step of PML 2.9's CrossBatchMemory, to 1e-5."""
    data, cases = _fixture_cases()
    case = cases[name]
    kw = case["ours"]["kwargs"]
    inner = (PMLContrastive() if "contrastive" in name
             else losses.TripletLoss(margin=0.2, mining="all"))
    xbm = _new_xbm(inner, kw["embedding_size"], kw["memory_size"])
    normalize = kw["loss"].get("ours_input") == "l2_normalize"
    steps = [(data[f"{name}/step{k}/labels"], data[f"{name}/step{k}/embeddings"])
             for k in range(len(case["steps"]))]
    for k, step in enumerate(steps):
        ((value, grad),) = _run_steps(xbm, [step], normalize)
        assert abs(float(value) - float(data[f"{name}/step{k}/value"])) < TOL, k
        np.testing.assert_allclose(grad, data[f"{name}/step{k}/grad"], atol=TOL)
        assert int(to_np(xbm.memory.position)) == case["steps"][k]["queue_idx_after"]
        filled = case["steps"][k]["has_been_filled"]
        assert (int(to_np(xbm.memory.count)) == kw["memory_size"]) == filled


# ====================================================== XBM: NumPy reference, our losses

def ref_xbm_contrastive(steps, m, margin=1.0):
    """PML's XBM semantics with OUR ContrastiveLoss (joint mean over pairs), float64.

    Returns per step (value, grad) with finite-difference gradients w.r.t. the batch
    (the memory detached).
    """
    mem_x, mem_y, q, count, out = np.zeros((m, steps[0][1].shape[1])), np.zeros(m, int), 0, 0, []
    for y, x in steps:
        x = np.asarray(x, np.float64)
        slots = (q + np.arange(len(y))) % m
        mem_x[slots], mem_y[slots] = x, y
        q, count = (q + len(y)) % m, min(count + len(y), m)
        ref_x, ref_y, ref_slot = mem_x[:count].copy(), mem_y[:count], np.arange(count)

        def value(e, ref_x=ref_x, ref_y=ref_y, ref_slot=ref_slot, y=y, slots=slots):
            D = np.sqrt(((e[:, None] - ref_x[None]) ** 2).sum(-1))
            same = y[:, None] == ref_y[None]
            pos = same & (slots[:, None] != ref_slot[None])
            neg = ~same
            terms = np.where(pos, D, np.where(neg, np.maximum(margin - D, 0), 0.0))
            k = (pos | neg).sum()
            return terms.sum() / k if k else 0.0

        out.append((value(x), numeric_grad(value, x)))
    return out


def test_xbm_contrastive_matches_numpy_reference(rng):
    m, d = 9, 3
    steps = [(rng.integers(0, 3, b), (0.4 * rng.normal(size=(b, d))).astype("float32"))
             for b in (4, 4, 3, 4)]
    xbm = _new_xbm(losses.ContrastiveLoss(margin=1.0), d, m)
    for (v, g), (rv, rg) in zip(_run_steps(xbm, steps, False), ref_xbm_contrastive(steps, m)):
        assert abs(float(v) - rv) < TOL
        np.testing.assert_allclose(g, rg, atol=TOL)


def test_xbm_contrastive_fixture_documented_difference():
    """PML's contrastive reduction (separate means) differs from ours (joint mean); our
    value on the PML sequence equals the NumPy reference of PML's XBM with our loss."""
    data, cases = _fixture_cases()
    name = "xbm_contrastive_nonorm_d8"
    kw = cases[name]["ours"]["kwargs"]
    steps = [(data[f"{name}/step{k}/labels"], data[f"{name}/step{k}/embeddings"]) for k in range(3)]
    xbm = _new_xbm(losses.ContrastiveLoss(), kw["embedding_size"], kw["memory_size"])
    ours = _run_steps(xbm, steps, False)
    ref = ref_xbm_contrastive(steps, kw["memory_size"])
    for k, ((v, g), (rv, rg)) in enumerate(zip(ours, ref)):
        assert abs(float(v) - rv) < TOL
        np.testing.assert_allclose(g, rg, atol=TOL)
        assert abs(float(v) - float(data[f"{name}/step{k}/value"])) > 1e-3


@pytest.mark.parametrize("inner", [
    lambda: losses.ContrastiveLoss(), lambda: losses.ContrastiveLoss(power=2, reducer="mean_nonzero"),
    lambda: losses.TripletLoss(mining="all"), lambda: losses.TripletLoss(mining="hard"),
    lambda: losses.TripletLoss(mining="semi_hard"), lambda: losses.TripletLoss(mining="all", soft=True),
    lambda: losses.ContrastiveLoss(miner="pair_margin"),
])
def test_xbm_first_step_equals_wrapped_loss(rng, inner):
    """First batch in an empty memory (more slots than rows): references = the batch
    itself, so the (b, m) rectangular path equals the wrapped loss on the batch (value),
    and its gradient that of the wrapped loss with the references detached."""
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    x = rng.normal(size=(8, 5)).astype("float32")
    loss = inner()
    xbm = _new_xbm(inner(), 5, 20)
    v, g = value_and_grad(lambda e: xbm(y, e), x)
    assert abs(float(v) - float(loss(y, x))) < TOL
    eye = np.eye(8, dtype=bool)
    rv, rg = value_and_grad(lambda e: loss.compute(
        ops.convert_to_tensor(y), e, ref_labels=ops.convert_to_tensor(y),
        ref_embeddings=ops.stop_gradient(e), same_sample=eye), x)
    assert abs(float(v) - float(rv)) < TOL
    np.testing.assert_allclose(g, rg, atol=TOL)


def test_xbm_wrap_around(rng):
    xbm = _new_xbm(losses.ContrastiveLoss(), 2, 5)
    mem = xbm.memory
    expected_x, expected_y = np.zeros((5, 2), "float32"), np.zeros(5, "int32")
    q = 0
    for step in range(4):
        y = rng.integers(0, 4, 3)
        x = rng.normal(size=(3, 2)).astype("float32")
        xbm(y, x)
        slots = (q + np.arange(3)) % 5
        expected_x[slots], expected_y[slots] = x, y
        q = (q + 3) % 5
        np.testing.assert_allclose(to_np(mem.embeddings), expected_x, atol=1e-7)
        np.testing.assert_array_equal(to_np(mem.labels), expected_y)
        assert int(to_np(mem.position)) == q
        assert int(to_np(mem.count)) == min(3 * (step + 1), 5)
    mem.reset()
    assert int(to_np(mem.count)) == 0 and not to_np(mem.embeddings).any()


def test_xbm_jit_equals_eager(rng):
    y = rng.integers(0, 3, 6)
    x = rng.normal(size=(6, 4)).astype("float32")
    eager = _new_xbm(losses.TripletLoss(mining="all"), 4, 8)
    compiled = _new_xbm(losses.TripletLoss(mining="all"), 4, 8)
    fn = jit(lambda a, b: compiled(a, b))
    for _ in range(3):  # the second and third calls see a wrapped memory
        if BACKEND == "jax":
            # jax.jit cannot assign variables outside a StatelessScope: compare values only
            # on the first call (the fit tests cover the stateful jit path).
            break
        assert abs(float(eager(y, x)) - float(fn(y, x))) < 1e-5
    np.testing.assert_allclose(to_np(eager.memory.embeddings), to_np(compiled.memory.embeddings))


def test_xbm_nan_and_degenerate(rng):
    xbm = _new_xbm(losses.ContrastiveLoss(), 3, 6)
    x = rng.normal(size=(3, 3)).astype("float32")
    x[1, 0] = np.nan
    assert np.isnan(float(xbm(np.array([0, 0, 1]), x)))
    for y, x in ((np.array([0]), np.ones((1, 3), "float32")),
                 (np.array([1, 1, 1]), np.ones((3, 3), "float32"))):
        xbm = _new_xbm(losses.TripletLoss(mining="all"), 3, 6)
        v, g = value_and_grad(lambda e: xbm(y, e), x)
        assert np.isfinite(v) and np.all(np.isfinite(g))


def test_xbm_miner_restricts_pairs(rng):
    y = np.array([0, 0, 1, 1, 2, 2])
    x = rng.normal(size=(6, 3)).astype("float32")
    xbm = _new_xbm(losses.ContrastiveLoss(), 3, 12)
    xbm_mined = _new_xbm(losses.ContrastiveLoss(), 3, 12)
    xbm_mined.miner = losses.ContrastiveLoss(miner="pair_margin").miner
    v, v_mined = float(xbm(y, x)), float(xbm_mined(y, x))
    plain = float(losses.ContrastiveLoss(miner="pair_margin")(y, x))
    assert abs(v_mined - plain) < TOL and np.isfinite(v)


# ====================================================== XBM: model.fit, saving, config

def _model(xbm, d_in=6):
    inp = keras.Input((d_in,))
    emb = keras.layers.UnitNormalization()(keras.layers.Dense(xbm.embedding_size)(inp))
    return keras.Model(inp, xbm.memory(emb))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_xbm_fit_fills_memory(rng, jit_compile):
    if BACKEND not in ("tensorflow", "jax"):
        pytest.skip("fit with the memory is tested on TensorFlow and JAX")
    xbm = losses.CrossBatchMemory(losses.TripletLoss(mining="hard"), embedding_size=4,
                                  memory_size=10)
    model = _model(xbm)
    model.compile(keras.optimizers.SGD(0.0), loss=xbm, jit_compile=jit_compile)
    x = rng.normal(size=(12, 6)).astype("float32")
    y = np.arange(12) % 3
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    mem = xbm.memory
    assert int(to_np(mem.count)) == 10 and int(to_np(mem.position)) == 2
    emb = model.predict(x, verbose=0)
    # rows 0..7 -> slots 0..7; rows 8, 9, 10, 11 -> slots 8, 9, 0, 1
    order = [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    np.testing.assert_allclose(to_np(mem.embeddings), emb[order], atol=1e-5)
    np.testing.assert_array_equal(to_np(mem.labels), y[order])
    # with a learning rate the model trains and the memory keeps filling
    model.compile(keras.optimizers.SGD(0.1), loss=xbm, jit_compile=jit_compile)
    before = to_np(model.layers[1].kernel).copy()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(before, to_np(model.layers[1].kernel))
    assert int(to_np(mem.position)) == 4


def test_xbm_save_load(tmp_path, rng):
    if BACKEND not in ("tensorflow", "jax"):
        pytest.skip("fit with the memory is tested on TensorFlow and JAX")
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, memory_size=8)
    model = _model(xbm)
    model.compile("sgd", loss=xbm)
    x, y = rng.normal(size=(8, 6)).astype("float32"), np.arange(8) % 2
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "xbm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, losses.CrossBatchMemory)
    memory = loaded.layers[-1]
    assert isinstance(memory, EmbeddingMemory) and loaded.loss.memory is memory
    np.testing.assert_allclose(to_np(memory.embeddings), to_np(xbm.memory.embeddings))
    assert int(to_np(memory.count)) == 8
    loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(to_np(memory.position)) == 0 and int(to_np(memory.count)) == 8


def test_xbm_config_round_trip_and_get():
    xbm = losses.CrossBatchMemory(losses.TripletLoss(margin=0.3, mining="all"), embedding_size=4,
                                  memory_size=16, miner="pair_margin")
    xbm.memory.build((None, 4))
    config = xbm.get_config()
    clone = losses.CrossBatchMemory.from_config(config)
    assert clone.get_config() == config
    assert clone.memory is xbm.memory  # resolved by name
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(xbm))
    assert again.get_config() == config
    got = losses.get("cross_batch_memory", loss=losses.ContrastiveLoss(), embedding_size=4)
    assert isinstance(got, losses.CrossBatchMemory) and got.memory_size == 1024
    assert xbm.bounds(6) == losses.TripletLoss(margin=0.3).bounds(6)
    assert EmbeddingMemory.from_config(xbm.memory.get_config()).memory_size == 16


def test_xbm_errors():
    with pytest.raises(ValueError, match="Received: loss"):
        losses.CrossBatchMemory(losses.VICRegLoss(), embedding_size=4)
    with pytest.raises(ValueError, match="Received: loss"):
        losses.CrossBatchMemory(losses.NPairLoss(), embedding_size=4)
    with pytest.raises(ValueError, match="cross_replica"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(cross_replica=True), embedding_size=4)
    with pytest.raises(ValueError, match="Received: memory_size"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, memory_size=0)
    with pytest.raises(ValueError, match="Received: embedding_size"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=2.5)
    with pytest.raises(ValueError, match="Received: miner"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, miner="hard")
    with pytest.raises(ValueError, match="Received: memory_name"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, memory_name=3)
    with pytest.raises(ValueError, match="no built EmbeddingMemory"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4,
                                memory_name="no_such_memory").memory
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, memory_size=4)
    y, x = np.array([0, 1, 0]), np.ones((3, 4), "float32")
    with pytest.raises(ValueError, match="xbm.memory"):
        xbm(y, x)  # memory not in a model (never built)
    xbm.memory.build((None, 4))
    with pytest.raises(ValueError, match="memory_size"):
        xbm(np.arange(5), np.ones((5, 4), "float32"))
    with pytest.raises(ValueError, match="embedding_size"):
        xbm(y, np.ones((3, 5), "float32"))
    with pytest.raises(ValueError, match="sample_weight"):
        xbm(y, x, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="Received: reduction"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, reduction="sum")
    with pytest.raises(ValueError, match="input_shape"):
        EmbeddingMemory(4, 3).build((None, 5))


def test_xbm_memory_outside_model_is_refused_on_jax(rng):
    if BACKEND != "jax":
        pytest.skip("TensorFlow assigns the memory's variables wherever they live")
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, memory_size=8)
    xbm.memory.build((None, 4))
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(4)(inp))  # memory layer not placed
    model.compile("sgd", loss=xbm)
    with pytest.raises(ValueError, match="xbm.memory"):
        model.fit(rng.normal(size=(4, 6)).astype("float32"), np.arange(4) % 2, verbose=0)
