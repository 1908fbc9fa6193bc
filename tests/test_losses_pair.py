"""Multi-Similarity, SupCon, NT-Xent and lifted structure losses.

Parity with pytorch-metric-learning 2.9 (tests/fixtures/pml_parity.npz, float64 torch) and
tensorflow-addons' LiftedStructLoss (tests/fixtures/tfa_lifted.npz, float32), float64 NumPy
references written from the papers' formulas, XLA == eager, degenerate batches, the Keras
contract (config, get, fit).
"""

import json
import math
import os

import keras
import numpy as np
import pytest
from _helpers import jit, numeric_grad, to_np
from _helpers import value_and_grad as _value_and_grad

from keras_featreg import losses as L
from keras_featreg import distances, miners
from keras_featreg.ops.pairwise import l2_normalize

HERE = os.path.dirname(__file__)
PML_FILE = os.path.join(HERE, "fixtures", "pml_parity.npz")
TFA_FILE = os.path.join(HERE, "fixtures", "tfa_lifted.npz")

OUR_CLASSES = {
    "MultiSimilarityLoss": L.MultiSimilarityLoss,
    "SupConLoss": L.SupConLoss,
    "NTXentLoss": L.NTXentLoss,
    "LiftedStructureLoss": L.LiftedStructureLoss,
    "GeneralizedLiftedStructureLoss": L.GeneralizedLiftedStructureLoss,
}


def _load(path):
    data = np.load(path, allow_pickle=False)
    manifest = json.loads(str(data["manifest"]))
    return data, {c["name"]: c for c in manifest["cases"]}


PML, PML_CASES = _load(PML_FILE)
TFA, TFA_CASES = _load(TFA_FILE)
OUR_PML = sorted(n for n, c in PML_CASES.items() if c["ours"]["class"] in OUR_CLASSES)
OUR_TFA_EXACT = sorted(n for n, c in TFA_CASES.items() if c["relation"] == "exact")
OUR_TFA_DIFFERS = sorted(n for n, c in TFA_CASES.items() if c["relation"] == "differs")


def _value_and_grad_of(loss, labels, x, normalize=False, jit_compile=True):
    def fn(t):
        return loss(labels, l2_normalize(t) if normalize else t)

    return _value_and_grad(fn, x, jit=jit_compile)


def _loss_from(ours):
    miner = None
    if "miner" in ours:
        miner = getattr(miners, ours["miner"]["class"])(**ours["miner"]["kwargs"])
    return OUR_CLASSES[ours["class"]](**ours["kwargs"], miner=miner)


# ------------------------------------------------------------------------------- parity


def test_fixture_manifests_cover_the_losses():
    classes = {PML_CASES[n]["ours"]["class"] for n in OUR_PML}
    assert classes == set(OUR_CLASSES)
    assert len(OUR_PML) >= 80
    assert all(PML_CASES[n]["relation"] == "exact" for n in OUR_PML)
    assert len(OUR_TFA_EXACT) >= 6 and len(OUR_TFA_DIFFERS) == 4


@pytest.mark.parametrize("name", OUR_PML)
def test_pml_parity_values_and_gradients(name):
    case = PML_CASES[name]
    labels, x = PML[f"{name}/labels"], PML[f"{name}/embeddings"]
    loss = _loss_from(case["ours"])
    normalize = case["ours"].get("ours_input") == "l2_normalize"
    value, grad = _value_and_grad_of(loss, labels, x, normalize=normalize)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, PML[f"{name}/value"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(grad, PML[f"{name}/grad"], rtol=0, atol=1e-5)


MINED = sorted(n for n in OUR_PML if "mined_pairs" in PML_CASES[n])


@pytest.mark.parametrize("name", MINED)
def test_multi_similarity_miner_keeps_the_pairs_pml_keeps(name):
    case = PML_CASES[name]
    labels, x = PML[f"{name}/labels"], PML[f"{name}/embeddings"]
    miner = miners.MultiSimilarityMiner(**case["ours"]["miner"]["kwargs"])
    distance = L.MultiSimilarityLoss().distance
    mined = miner(distance(x), labels, distance=distance)
    counts = {"pos": int(to_np(mined.positive).sum()), "neg": int(to_np(mined.negative).sum())}
    assert counts == case["mined_pairs"]


@pytest.mark.parametrize("name", OUR_TFA_EXACT)
def test_tfa_lifted_parity_values_and_gradients(name):
    case = TFA_CASES[name]
    labels, x = TFA[f"{name}/labels"], TFA[f"{name}/embeddings"]
    loss = _loss_from(case["ours"])
    value, grad = _value_and_grad_of(loss, labels, x)
    # TFA computed in float32: relative 1e-5 on the value, 1e-5 on the gradient.
    np.testing.assert_allclose(value, TFA[f"{name}/value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, TFA[f"{name}/grad"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", OUR_TFA_DIFFERS)
def test_tfa_lifted_degenerate_nan_is_zero_here(name):
    """Documented difference: TFA's NaN (no positive / no negative pair) is 0 here, as PML."""
    labels, x = TFA[f"{name}/labels"], TFA[f"{name}/embeddings"]
    assert np.isnan(TFA[f"{name}/value"])
    value, grad = _value_and_grad_of(L.LiftedStructureLoss(), labels, x)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_ntxent_two_view_fixture_layout_is_two_view_batch():
    for name in ("ntxent_two_view_b16_d8", "ntxent_two_view_b32_d32"):
        labels, x = PML[f"{name}/labels"], PML[f"{name}/embeddings"]
        b = len(labels) // 2
        np.testing.assert_array_equal(labels[:b], labels[b:])
        ours_labels, ours_x = two = L.two_view_batch(x[:b], x[b:], labels[:b])
        np.testing.assert_array_equal(to_np(ours_x), x)
        value = L.NTXentLoss(temperature=0.07)(*two)
        np.testing.assert_allclose(to_np(value), PML[f"{name}/value"], atol=1e-5)
        # Without labels the views are paired by position: the same loss when the
        # fixture's labels are distinct.
        if len(np.unique(labels[:b])) == b:
            unlabelled = L.two_view_batch(x[:b], x[b:])
            np.testing.assert_allclose(to_np(L.NTXentLoss(temperature=0.07)(*unlabelled)),
                                       PML[f"{name}/value"], atol=1e-5)


# ------------------------------------------------------------------ float64 references


def _masks(labels):
    same = labels[:, None] == labels[None, :]
    eye = np.eye(len(labels), dtype=bool)
    return same & ~eye, ~same


def _cos(x):
    n = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return n @ n.T


def _euclid(x):
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def ref_multi_similarity(x, labels, alpha=2.0, beta=50.0, base=0.5, epsilon=None,
                         distance="cosine_similarity"):
    pos, neg = _masks(labels)
    if distance == "cosine_similarity":
        s = _cos(x)
        closer = s - base
    else:
        s = -_euclid(x)
        closer = base + s  # base - D
    if epsilon is not None:
        keep_pos, keep_neg = np.zeros_like(pos), np.zeros_like(neg)
        for i in range(len(labels)):
            if pos[i].any() and neg[i].any():
                keep_pos[i] = pos[i] & (s[i] - epsilon < s[i][neg[i]].max())
                keep_neg[i] = neg[i] & (s[i] + epsilon > s[i][pos[i]].min())
        pos, neg = keep_pos, keep_neg
    total = 0.0
    for i in range(len(labels)):
        total += math.log1p(np.exp(-alpha * closer[i][pos[i]]).sum()) / alpha
        total += math.log1p(np.exp(beta * closer[i][neg[i]]).sum()) / beta
    return total / len(labels)


def ref_supcon(x, labels, temperature=0.1):
    pos, neg = _masks(labels)
    if not pos.any() or not neg.any():
        return 0.0
    z = _cos(x) / temperature
    per_anchor = []
    for i in range(len(labels)):
        if pos[i].any():
            lse = np.log(np.exp(z[i][pos[i] | neg[i]]).sum())
            per_anchor.append(-np.mean(z[i][pos[i]] - lse))
    per_anchor = [v for v in per_anchor if v > 0]
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def ref_ntxent(x, labels, temperature=0.07):
    pos, neg = _masks(labels)
    if not pos.any() or not neg.any():
        return 0.0
    z = _cos(x) / temperature
    terms = [math.log1p(np.exp(z[a][neg[a]] - z[a, p]).sum()) for a, p in zip(*np.nonzero(pos))]
    return float(np.mean(terms))


def ref_lifted(x, labels, neg_margin=1.0, pos_margin=0.0):
    pos, neg = _masks(labels)
    if not pos.any() or not neg.any():
        return 0.0
    d = _euclid(x)
    terms = []
    for i, j in zip(*np.nonzero(pos)):
        pushed = np.concatenate([neg_margin - d[i][neg[i]], neg_margin - d[j][neg[j]]])
        jij = np.logaddexp.reduce(pushed) + d[i, j] - pos_margin  # log sum exp, stable
        terms.append(max(jij, 0.0) ** 2 / 2)
    return float(np.mean(terms))


def ref_generalized_lifted(x, labels, neg_margin=1.0, pos_margin=0.0):
    pos, neg = _masks(labels)
    d = _euclid(x)
    total = 0.0
    for i in range(len(labels)):
        lp = np.logaddexp.reduce(d[i][pos[i]] - pos_margin) if pos[i].any() else 0.0
        ln = np.logaddexp.reduce(neg_margin - d[i][neg[i]]) if neg[i].any() else 0.0
        total += max(lp + ln, 0.0)
    return total / len(labels)


REFERENCES = {
    "multi_similarity": (lambda: L.MultiSimilarityLoss(), ref_multi_similarity),
    "multi_similarity_mined": (
        lambda: L.MultiSimilarityLoss(alpha=3.0, beta=20.0, base=0.3,
                                      miner=miners.MultiSimilarityMiner(epsilon=0.2)),
        lambda x, y: ref_multi_similarity(x, y, 3.0, 20.0, 0.3, epsilon=0.2)),
    "multi_similarity_euclidean": (
        lambda: L.MultiSimilarityLoss(base=1.0, distance="euclidean"),
        lambda x, y: ref_multi_similarity(x, y, base=1.0, distance="euclidean")),
    "supcon": (lambda: L.SupConLoss(temperature=0.2), lambda x, y: ref_supcon(x, y, 0.2)),
    "ntxent": (lambda: L.NTXentLoss(temperature=0.3), lambda x, y: ref_ntxent(x, y, 0.3)),
    "lifted": (lambda: L.LiftedStructureLoss(neg_margin=0.8, pos_margin=0.1),
               lambda x, y: ref_lifted(x, y, 0.8, 0.1)),
    "generalized_lifted": (lambda: L.GeneralizedLiftedStructureLoss(neg_margin=1.2, pos_margin=0.2),
                           lambda x, y: ref_generalized_lifted(x, y, 1.2, 0.2)),
}


def _random_batch(seed, b=12, d=5, classes=4, scale=0.6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=b)
    return labels, (scale * rng.normal(size=(b, d))).astype("float32")


@pytest.mark.parametrize("config", sorted(REFERENCES))
def test_matches_float64_numpy_reference(config):
    make, ref = REFERENCES[config]
    loss = make()
    for seed in range(4):
        labels, x = _random_batch(seed)
        expected = ref(x.astype(np.float64), labels)
        got = float(to_np(loss(labels, x)))
        assert got == pytest.approx(expected, rel=2e-5, abs=2e-6), (seed, got, expected)


@pytest.mark.parametrize("config", sorted(REFERENCES))
def test_gradient_matches_central_differences_of_reference(config):
    make, ref = REFERENCES[config]
    labels, x = _random_batch(7, b=8, d=3)
    _, grad = _value_and_grad_of(make(), labels, x)
    expected = numeric_grad(lambda t: ref(t, labels), x.astype(np.float64))
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=2e-5)


# --------------------------------------------------------------- compilation, degenerate

ALL_LOSSES = {
    "multi_similarity": lambda: L.MultiSimilarityLoss(),
    "multi_similarity_mined": lambda: L.MultiSimilarityLoss(miner="multi_similarity"),
    "supcon": lambda: L.SupConLoss(),
    "ntxent": lambda: L.NTXentLoss(),
    "lifted": lambda: L.LiftedStructureLoss(),
    "lifted_mined": lambda: L.LiftedStructureLoss(miner="pair_margin"),
    "generalized_lifted": lambda: L.GeneralizedLiftedStructureLoss(),
}


@pytest.mark.parametrize("config", sorted(ALL_LOSSES))
def test_jit_equals_eager(config):
    loss = ALL_LOSSES[config]()
    labels, x = _random_batch(3, b=16, d=6)
    eager_value, eager_grad = _value_and_grad_of(loss, labels, x, jit_compile=False)
    compiled = jit(lambda t: loss(labels, t))
    np.testing.assert_allclose(to_np(compiled(x)), eager_value, rtol=1e-5, atol=1e-6)
    jit_value, jit_grad = _value_and_grad_of(loss, labels, x, jit_compile=True)
    np.testing.assert_allclose(jit_value, eager_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jit_grad, eager_grad, rtol=1e-4, atol=1e-6)


DEGENERATE = {
    "single": (np.array([0]), np.ones((1, 4))),
    "one_class": (np.zeros(5, int), np.random.default_rng(0).normal(size=(5, 4))),
    "singletons": (np.arange(5), np.random.default_rng(1).normal(size=(5, 4))),
    "identical_rows": (np.array([0, 0, 1, 1, 2]), np.ones((5, 4))),
    "zeros": (np.array([0, 0, 1, 1]), np.zeros((4, 4))),
    "far_apart": (np.array([0, 0, 1, 1]), 1e4 * np.eye(4)),
}


@pytest.mark.parametrize("batch", sorted(DEGENERATE))
@pytest.mark.parametrize("config", sorted(ALL_LOSSES))
def test_degenerate_batches_finite_values_and_gradients(config, batch):
    labels, x = DEGENERATE[batch]
    value, grad = _value_and_grad_of(ALL_LOSSES[config](), labels, x.astype("float32"),
                                     jit_compile=False)
    assert np.isfinite(value), value
    assert np.all(np.isfinite(grad)), grad


@pytest.mark.parametrize("config", ["supcon", "ntxent", "lifted", "multi_similarity_mined"])
@pytest.mark.parametrize("batch", ["single", "one_class", "singletons"])
def test_nothing_to_compare_gives_zero_and_zero_gradient(config, batch):
    labels, x = DEGENERATE[batch]
    value, grad = _value_and_grad_of(ALL_LOSSES[config](), labels, x.astype("float32"),
                                     jit_compile=False)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("config", sorted(ALL_LOSSES))
def test_nan_input_gives_nan(config):
    labels, x = _random_batch(5, b=8)
    x[2, 1] = np.nan
    assert np.isnan(float(to_np(ALL_LOSSES[config]()(labels, x))))
    x[2, 1] = np.inf
    assert np.isnan(float(to_np(ALL_LOSSES[config]()(labels, x))))


def test_lifted_is_stable_far_apart_and_close():
    labels = np.array([0, 0, 1, 1])
    for scale in (1e-3, 1.0, 1e3):
        x = (scale * np.random.default_rng(2).normal(size=(4, 3))).astype("float32")
        value = float(to_np(L.LiftedStructureLoss()(labels, x)))
        assert value == pytest.approx(ref_lifted(x.astype(np.float64), labels), rel=1e-5)


# ---------------------------------------------------------------- API, config, bounds


@pytest.mark.parametrize("name,cls", [
    ("multi_similarity", L.MultiSimilarityLoss),
    ("MultiSimilarityLoss", L.MultiSimilarityLoss),
    ("supcon", L.SupConLoss),
    ("supcon", L.SupConLoss),
    ("ntxent", L.NTXentLoss),
    ("lifted_structure", L.LiftedStructureLoss),
    ("lifted_structure_loss", L.LiftedStructureLoss),
    ("generalized_lifted_structure", L.GeneralizedLiftedStructureLoss),
])
def test_get_by_name(name, cls):
    assert type(L.get(name)) is cls


CONFIG_LOSSES = [
    L.MultiSimilarityLoss(alpha=3.0, beta=40.0, base=0.4, miner=miners.MultiSimilarityMiner(0.2)),
    L.SupConLoss(temperature=0.3, distance="dot_product", reducer="mean"),
    L.NTXentLoss(temperature=0.5, miner="pair_margin"),
    L.LiftedStructureLoss(neg_margin=0.5, pos_margin=0.1, distance="squared_euclidean"),
    L.GeneralizedLiftedStructureLoss(neg_margin=2.0, distance="cosine"),
]


@pytest.mark.parametrize("loss", CONFIG_LOSSES, ids=lambda l: type(l).__name__)
def test_config_roundtrip(loss):
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    labels, x = _random_batch(9)
    assert float(to_np(restored(labels, x))) == pytest.approx(float(to_np(loss(labels, x))))


@pytest.mark.parametrize("factory,message", [
    (lambda: L.MultiSimilarityLoss(alpha=0), "Received: alpha=0"),
    (lambda: L.MultiSimilarityLoss(beta=-1), "Received: beta=-1"),
    (lambda: L.MultiSimilarityLoss(base="x"), "Received: base='x'"),
    (lambda: L.SupConLoss(temperature=0.0), "Received: temperature=0.0"),
    (lambda: L.NTXentLoss(temperature=-0.1), "Received: temperature=-0.1"),
    (lambda: L.LiftedStructureLoss(distance="cosine_similarity"),
     "Received: distance='cosine_similarity'"),
    (lambda: L.GeneralizedLiftedStructureLoss(distance="dot_product"),
     "Received: distance='dot_product'"),
    (lambda: L.LiftedStructureLoss(neg_margin=None), "Received: neg_margin=None"),
    (lambda: L.NTXentLoss(miner="hard"), "Received: miner='hard'"),
    (lambda: L.SupConLoss(reduction="sum"), "Received: reduction='sum'"),
    (lambda: L.two_view_batch(np.ones((3, 2), "float32"), np.ones((4, 2), "float32")),
     "Received: z_a.shape"),
])
def test_bad_arguments_raise_value_error(factory, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        factory()


def test_sample_weight_is_rejected():
    labels, x = _random_batch(1)
    with pytest.raises(ValueError, match="sample_weight"):
        L.SupConLoss()(labels, x, sample_weight=np.ones(len(labels)))


def test_pure_functions_equal_classes():
    labels, x = _random_batch(4)
    pairs = [
        (L.multi_similarity_loss, L.MultiSimilarityLoss()),
        (L.supcon_loss, L.SupConLoss()),
        (L.ntxent_loss, L.NTXentLoss()),
        (L.lifted_structure_loss, L.LiftedStructureLoss()),
        (L.generalized_lifted_structure_loss, L.GeneralizedLiftedStructureLoss()),
    ]
    for fn, loss in pairs:
        assert float(to_np(fn(labels, x))) == pytest.approx(float(to_np(loss(labels, x))))


def test_two_view_batch_labels():
    z_a, z_b = np.zeros((3, 2), "float32"), np.ones((3, 2), "float32")
    labels, batch = L.two_view_batch(z_a, z_b, labels=[7, 7, 2])
    assert to_np(labels).tolist() == [7, 7, 2, 7, 7, 2]
    assert to_np(batch)[3:].tolist() == np.ones((3, 2)).tolist()


BOUNDED = [L.MultiSimilarityLoss(), L.SupConLoss(), L.NTXentLoss(), L.LiftedStructureLoss(),
           L.GeneralizedLiftedStructureLoss(), L.MultiSimilarityLoss(distance="euclidean")]


@pytest.mark.parametrize("loss", BOUNDED, ids=lambda l: type(l).__name__)
def test_losses_of_normalized_batches_lie_within_bounds(loss):
    for seed, classes in [(0, 3), (1, 6), (2, 16)]:
        labels, x = _random_batch(seed, b=16, d=4, classes=classes, scale=3.0)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        lower, upper = loss.bounds(16)
        value = float(to_np(loss(labels, x)))
        assert lower <= value <= upper, (value, lower, upper)
    assert loss.bounds(144)[1] > 0
    with pytest.raises(ValueError, match="Received: batch_size=1"):
        loss.bounds(1)


def test_bounds_formulas():
    assert L.NTXentLoss(temperature=0.5).bounds(4) == pytest.approx(
        (0.0, math.log1p(2 * math.exp(4.0))))
    assert L.SupConLoss(temperature=0.5).bounds(4) == pytest.approx((0.0, math.log(3) + 4.0))
    assert L.LiftedStructureLoss().bounds(4) == pytest.approx((0.0, (math.log(4) + 3.0) ** 2 / 2))
    assert L.MultiSimilarityLoss(distance=_Unbounded()).bounds(4) is None


class _Unbounded(distances.Distance):
    """A similarity without a unit range."""

    is_inverted = True

    def pairwise(self, x, y=None):
        from keras_featreg.ops.pairwise import pairwise_dot
        return pairwise_dot(x, y)


# -------------------------------------------------------------------------- training


def _pxl_data(p_total=12, p=4, l=4, steps=2, seed=1, d_in=6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(p_total, d_in))
    xs, ys = [], []
    for _ in range(steps):
        labels = np.repeat(rng.choice(p_total, size=p, replace=False), l)
        xs.append(centres[labels] + 0.6 * rng.normal(size=(p * l, d_in)))
        ys.append(labels)
    return np.concatenate(xs).astype("float32"), np.concatenate(ys).astype("int32")


FIT = {
    "multi_similarity": lambda: L.MultiSimilarityLoss(miner=miners.MultiSimilarityMiner(0.1)),
    "supcon": lambda: L.SupConLoss(),
    "ntxent": lambda: L.NTXentLoss(temperature=0.2),
    "lifted": lambda: L.LiftedStructureLoss(),
    "generalized_lifted": lambda: L.GeneralizedLiftedStructureLoss(),
}


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("config", sorted(FIT))
def test_model_fit_two_steps(config, jit_compile):
    keras.utils.set_random_seed(0)
    x, y = _pxl_data()
    model = keras.Sequential([
        keras.Input((x.shape[1],)),
        keras.layers.Dense(8),
        keras.layers.UnitNormalization(),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=FIT[config](),
                  jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] <= losses[0] + 1e-6, losses


@pytest.mark.parametrize("config", ["multi_similarity", "supcon", "ntxent", "lifted",
                                    "generalized_lifted"])
def test_batch_as_its_own_references_equals_the_batch_loss(config):
    """The reference path (a cross-batch memory holding the batch) gives the same loss."""
    loss = ALL_LOSSES[config]()
    labels, x = _random_batch(6, b=10)
    same = np.eye(10, dtype=bool)
    via_refs = loss.compute(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(x),
                            keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(x),
                            same_sample=keras.ops.convert_to_tensor(same))
    assert float(to_np(via_refs)) == pytest.approx(float(to_np(loss(labels, x))), rel=1e-5)
