"""Tests of the ranking losses: triplet, contrastive, N-pair and angular.

References are independent of the library: float64 numpy with explicit Python loops over
pairs/triplets, hand-computed small cases, central finite differences for gradients, and
tensorflow-addons values/gradients recorded by tools/make_tfa_fixtures.py.
"""

import json
import math
import os

import numpy as np
import pytest

import keras
from keras import ops

from keras_featreg import losses as lr
from _helpers import value_and_grad as _value_and_grad
from _references import (
    _normalize,
    _softplus,
    ref_angular,
    ref_contrastive,
    ref_npair,
    ref_triplet,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tfa_parity.npz")


# ----------------------------------------------------------------------------- helpers


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _numeric_grad(fn, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


# --------------------------------------------------------------------- configurations

CONFIGS = {
    "contrastive": (lr.ContrastiveLoss, {}, ref_contrastive),
    "contrastive_m0.5_sq_power2": (
        lr.ContrastiveLoss, {"margin": 0.5, "distance": "squared_euclidean", "power": 2}, ref_contrastive),
    "contrastive_cosine": (lr.ContrastiveLoss, {"margin": 0.7, "distance": "cosine"}, ref_contrastive),
    "triplet_semihard": (lr.TripletLoss, {}, ref_triplet),
    "triplet_semihard_sq_m1": (
        lr.TripletLoss, {"margin": 1.0, "distance": "squared_euclidean"}, ref_triplet),
    "triplet_hard": (lr.TripletLoss, {"mining": "hard"}, ref_triplet),
    "triplet_hard_cosine": (lr.TripletLoss, {"mining": "hard", "distance": "cosine", "margin": 0.3}, ref_triplet),
    "triplet_hard_soft": (lr.TripletLoss, {"mining": "hard", "soft": True}, ref_triplet),
    "triplet_all": (lr.TripletLoss, {"mining": "all", "margin": 0.5}, ref_triplet),
    "triplet_all_soft": (lr.TripletLoss, {"mining": "all", "soft": True}, ref_triplet),
    "triplet_semihard_soft": (lr.TripletLoss, {"soft": True}, ref_triplet),
    "npair": (lr.NPairLoss, {}, ref_npair),
    "npair_all_l2": (lr.NPairLoss, {"negatives": "all", "l2_reg": 0.5}, ref_npair),
    "angular": (lr.AngularLoss, {}, ref_angular),
    "angular_30_all": (lr.AngularLoss, {"alpha": 30.0, "negatives": "all"}, ref_angular),
}
PAIR_LOSSES = (lr.NPairLoss, lr.AngularLoss)


def _batch(cls, rng, normalized=True, b=12, d=5):
    if cls in PAIR_LOSSES:
        labels = rng.permutation(np.repeat(rng.choice(50, size=b // 2, replace=False), 2))
    else:
        labels = rng.integers(0, 4, size=b)
    x = rng.normal(size=(b, d))
    x = _normalize(x) if normalized else 1.5 * x
    return labels, x.astype("float32")


def _reference(ref, labels, x, kwargs):
    return ref(list(labels), np.asarray(x, np.float64), **kwargs)


# ------------------------------------------------------------------ reference values


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_loss_matches_bruteforce_reference(config):
    cls, kwargs, ref = CONFIGS[config]
    loss = cls(**kwargs)
    for seed, normalized in [(0, True), (1, True), (2, False), (3, False)]:
        labels, x = _batch(cls, np.random.default_rng(seed), normalized)
        got = float(_np(loss(labels, x)))
        expected = _reference(ref, labels, x, kwargs)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5), (seed, normalized)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_pure_function_equals_class(config):
    cls, kwargs, _ = CONFIGS[config]
    fn = {lr.ContrastiveLoss: lr.contrastive_loss, lr.TripletLoss: lr.triplet_loss,
          lr.NPairLoss: lr.npair_loss, lr.AngularLoss: lr.angular_loss}[cls]
    labels, x = _batch(cls, np.random.default_rng(3))
    assert float(_np(fn(labels, x, **kwargs))) == pytest.approx(float(_np(cls(**kwargs)(labels, x))), abs=1e-7)


def test_triplet_by_hand_1d():
    # 1-D points, class 0 at 0 and 2, class 1 at 2.5 and 5, margin 1.
    # D: 01=2, 02=2.5, 03=5, 12=.5, 13=3, 23=2.5.
    labels = np.array([0, 0, 1, 1])
    x = np.array([[0.0], [2.0], [2.5], [5.0]], "float32")
    # semi-hard: (0,1): 2-2.5+1=.5; (1,0): 2-3+1=0; (2,3): no negative > 2.5 (2.5 is not),
    # fallback max 2.5 -> 1; (3,2): 2.5-3+1=.5  => mean 2/4
    assert float(_np(lr.TripletLoss(margin=1.0)(labels, x))) == pytest.approx(0.5)
    # hard: anchors .5, 2.5, 3, .5 => 6.5/4
    assert float(_np(lr.TripletLoss(margin=1.0, mining="hard")(labels, x))) == pytest.approx(1.625)
    # all: active triplets .5, 2.5, 1, 3, .5 (three more are <= 0) => 7.5/5
    assert float(_np(lr.TripletLoss(margin=1.0, mining="all")(labels, x))) == pytest.approx(1.5)
    # soft hard: softplus of hp - hn = -.5, 1.5, 2, -.5
    expected = (2 * _softplus(-0.5) + _softplus(1.5) + _softplus(2.0)) / 4
    got = float(_np(lr.TripletLoss(mining="hard", soft=True)(labels, x)))
    assert got == pytest.approx(expected, rel=1e-6)
    # squared Euclidean, hard, margin 0: anchors 4-6.25, 4-.25, 6.25-.25, 6.25-9 -> relu
    got = float(_np(lr.TripletLoss(margin=0.0, mining="hard", distance="squared_euclidean")(labels, x)))
    assert got == pytest.approx((0 + 3.75 + 6.0 + 0) / 4)


def test_contrastive_by_hand_1d():
    labels = np.array([0, 0, 1])
    x = np.array([[0.0], [0.5], [0.8]], "float32")
    # pairs: (0,1) positive D=.5; (0,2) negative [1-.8]=.2; (1,2) negative [1-.3]=.7
    assert float(_np(lr.ContrastiveLoss()(labels, x))) == pytest.approx(1.4 / 3, rel=1e-6)
    assert float(_np(lr.ContrastiveLoss(power=2)(labels, x))) == pytest.approx(
        (0.25 + 0.04 + 0.49) / 3, rel=1e-6
    )
    assert float(_np(lr.ContrastiveLoss(margin=0.5)(labels, x))) == pytest.approx(
        (0.5 + 0.0 + 0.2) / 3, rel=1e-6
    )


def test_npair_by_hand_1d():
    labels = np.array([0, 1, 0, 1])  # anchors x=1 (class 0), x=2 (class 1); positives 3, 1
    x = np.array([[1.0], [2.0], [3.0], [1.0]], "float32")
    # anchor 0: pos logit 3, negative (class-1 positive, x=1) logit 1 -> log(1 + e^-2)
    # anchor 1: pos logit 2, negative (class-0 positive, x=3) logit 6 -> log(1 + e^4)
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(4))) / 2
    assert float(_np(lr.NPairLoss()(labels, x))) == pytest.approx(expected, rel=1e-6)
    # negatives="all": anchor 0 also sees x=2 (logit 2); anchor 1 also sees x=1 (logit 2)
    expected_all = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + 1 + math.exp(4))) / 2
    assert float(_np(lr.NPairLoss(negatives="all")(labels, x))) == pytest.approx(expected_all, rel=1e-6)
    # L2 regularizer: 0.25 * 0.1 * (mean(1, 4) + mean(9, 1))
    got = float(_np(lr.NPairLoss(l2_reg=0.1)(labels, x)))
    assert got == pytest.approx(expected + 0.025 * (2.5 + 5.0), rel=1e-6)


def test_angular_by_hand_1d():
    t = math.tan(math.radians(30.0)) ** 2  # 1/3
    labels = np.array([0, 1, 0, 1])
    x = np.array([[1.0], [1.0], [1.0], [-1.0]], "float32")
    # anchor 0: a=1, p=1, n=-1 -> f = 4t(2)(-1) - 2(1+t)(1) = -10t - 2
    # anchor 1: a=1, p=-1, n=1 -> f = 0 - 2(1+t)(-1) = 2 + 2t
    expected = (math.log1p(math.exp(-10 * t - 2)) + math.log1p(math.exp(2 + 2 * t))) / 2
    got = float(_np(lr.AngularLoss(alpha=30.0)(labels, x)))
    assert got == pytest.approx(expected, rel=1e-6)


def test_pair_losses_depend_on_roles_not_on_positions():
    rng = np.random.default_rng(4)
    labels, x = _batch(lr.NPairLoss, rng)
    rank = {i: sum(labels[j] == labels[i] for j in range(i)) for i in range(len(labels))}
    order = rng.permutation(len(labels))
    # Shuffle positions, then restore within-class order so each anchor stays first.
    for c in set(labels.tolist()):
        slots = [k for k in range(len(order)) if labels[order[k]] == c]
        members = sorted(order[slots], key=lambda i: rank[i])
        order[slots] = members
    assert not np.array_equal(order, np.arange(len(labels)))
    for loss in (lr.NPairLoss(), lr.AngularLoss(), lr.NPairLoss(negatives="all")):
        a = float(_np(loss(labels, x)))
        b = float(_np(loss(labels[order], x[order])))
        assert a == pytest.approx(b, rel=1e-5)
    # Swapping the roles of one pair changes the N-pair loss (it is not symmetric).
    swapped = np.arange(len(labels))
    first, second = np.flatnonzero(labels == labels[0])[:2]
    swapped[[first, second]] = [second, first]
    assert float(_np(lr.NPairLoss()(labels, x[swapped]))) != pytest.approx(
        float(_np(lr.NPairLoss()(labels, x))), rel=1e-4
    )


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_gradient_matches_central_differences(config):
    cls, kwargs, ref = CONFIGS[config]
    labels, x = _batch(cls, np.random.default_rng(5), normalized=True, b=8, d=3)
    loss = cls(**kwargs)
    value, grad = _value_and_grad(lambda t: loss(labels, t), x)
    numeric = _numeric_grad(lambda v: _reference(ref, labels, v, kwargs), x)
    assert float(value) == pytest.approx(_reference(ref, labels, x, kwargs), rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=2e-4)


# ------------------------------------------------------------------- degenerate batches


def _degenerate_batches():
    rng = np.random.default_rng(6)
    unit = _normalize(rng.normal(size=(6, 4))).astype("float32")
    return {
        "one_sample": (np.array([3]), unit[:1]),
        "no_positive_pair": (np.arange(6), unit),
        "no_negative": (np.zeros(6, int), unit),
        "identical_embeddings": (np.array([0, 0, 1, 1, 2, 2]), np.tile(unit[:1], (6, 1))),
        "zero_embeddings": (np.array([0, 0, 1, 1, 2, 2]), np.zeros((6, 4), "float32")),
        "two_samples_one_pair": (np.array([4, 4]), unit[:2]),
    }


DEGENERATE = _degenerate_batches()


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_degenerate_batches_finite_values_and_gradients(config):
    cls, kwargs, ref = CONFIGS[config]
    loss = cls(**kwargs)
    for batch in sorted(DEGENERATE):
        labels, x = DEGENERATE[batch]
        value, grad = _value_and_grad(lambda t: loss(labels, t), x)
        assert np.isfinite(value), batch
        assert np.all(np.isfinite(grad)), batch
        expected = _reference(ref, labels, x, kwargs)
        assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-5), batch


@pytest.mark.parametrize(
    "config, batch",
    [
        ("triplet_semihard", "no_positive_pair"),
        ("triplet_hard", "no_negative"),
        ("triplet_all", "one_sample"),
        ("npair", "no_positive_pair"),
        ("angular", "one_sample"),
        ("contrastive", "one_sample"),
    ],
)
def test_nothing_to_average_gives_zero_and_zero_gradient(config, batch):
    cls, kwargs, _ = CONFIGS[config]
    labels, x = DEGENERATE[batch]
    value, grad = _value_and_grad(lambda t: cls(**kwargs)(labels, t), x)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_identical_embeddings_values():
    labels, x = DEGENERATE["identical_embeddings"]
    # every distance is 0: each triplet costs the margin, each negative pair the margin.
    assert float(_np(lr.TripletLoss(margin=0.3, mining="hard")(labels, x))) == pytest.approx(0.3)
    assert float(_np(lr.TripletLoss(margin=0.3)(labels, x))) == pytest.approx(0.3)
    assert float(_np(lr.ContrastiveLoss(margin=1.0)(labels, x))) == pytest.approx(12 / 15)
    # N-pair: all logits 1 -> log(1 + |n|), |n| = 2 other positives
    assert float(_np(lr.NPairLoss()(labels, x))) == pytest.approx(math.log(3.0), rel=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("config", ["contrastive", "triplet_semihard", "triplet_hard", "triplet_all",
                                    "npair", "angular"])
def test_half_precision_inputs_are_computed_in_float32(dtype, config):
    cls, kwargs, ref = CONFIGS[config]
    labels, x = _batch(cls, np.random.default_rng(7))
    half = ops.cast(x, dtype)
    x_rounded = _np(ops.cast(half, "float32"))
    for fn in (
        lambda t: cls(**kwargs)(labels, t),
        lambda t: {lr.ContrastiveLoss: lr.contrastive_loss, lr.TripletLoss: lr.triplet_loss,
                   lr.NPairLoss: lr.npair_loss, lr.AngularLoss: lr.angular_loss}[cls](labels, t, **kwargs),
    ):
        out = fn(half)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert float(_np(out)) == pytest.approx(_reference(ref, labels, x_rounded, kwargs), rel=1e-5, abs=1e-5)
        value, grad = _value_and_grad(fn, half)
        assert np.isfinite(value) and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_float64_inputs_stay_float64_with_tensorflow():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("JAX runs without x64 by default")
    labels, x = _batch(lr.TripletLoss, np.random.default_rng(8))
    out = lr.triplet_loss(labels, x.astype("float64"))
    assert keras.backend.standardize_dtype(out.dtype) == "float64"


# ------------------------------------------------------------------------- validation


BAD_CONSTRUCTOR_ARGUMENTS = [
    (lambda: lr.TripletLoss(margin=-0.1), r"margin.*Received: margin=-0\.1"),
    (lambda: lr.TripletLoss(mining="semihard"), "Received: mining='semihard'"),
    (lambda: lr.TripletLoss(distance="L2"), "Received: distance='L2'"),
    (lambda: lr.TripletLoss(soft=1), "Received: soft=1"),
    (lambda: lr.ContrastiveLoss(margin=-1), "Received: margin=-1"),
    (lambda: lr.ContrastiveLoss(distance="manhattan"), "Received: distance='manhattan'"),
    (lambda: lr.ContrastiveLoss(power=3), "Received: power=3"),
    (lambda: lr.ContrastiveLoss(power=True), "Received: power=True"),
    (lambda: lr.NPairLoss(negatives="others"), "Received: negatives='others'"),
    (lambda: lr.NPairLoss(l2_reg=-0.002), "Received: l2_reg=-0.002"),
    (lambda: lr.AngularLoss(alpha=0.0), "Received: alpha=0.0"),
    (lambda: lr.AngularLoss(alpha=90), "Received: alpha=90"),
    (lambda: lr.AngularLoss(alpha=-45), "Received: alpha=-45"),
    (lambda: lr.AngularLoss(alpha=120.0), "Received: alpha=120.0"),
    (lambda: lr.AngularLoss(alpha="45"), "Received: alpha='45'"),
    (lambda: lr.AngularLoss(negatives=None), "Received: negatives=None"),
    (lambda: lr.NPairLoss().bounds(1), "Received: batch_size=1"),
    (lambda: lr.TripletLoss().bounds(10.5), "Received: batch_size=10.5"),
]


def test_bad_constructor_arguments_raise_value_error():
    for make, match in BAD_CONSTRUCTOR_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            make()


LOSS_FACTORIES = [lr.ContrastiveLoss, lr.TripletLoss, lr.NPairLoss, lr.AngularLoss]


BAD_INPUTS = [
    (np.zeros(4), np.ones((4,), "float32"), r"y_pred.*rank 1"),
    (np.zeros(4), np.ones((4, 2, 2), "float32"), r"y_pred.*rank 3"),
    (np.zeros(4), np.ones((4, 2), "int32"), r"y_pred.*int32"),
    (np.zeros((4, 2)), np.ones((4, 2), "float32"), r"y_true.shape=\(4, 2\)"),
    (np.zeros(3), np.ones((4, 2), "float32"), "same batch size"),
]


@pytest.mark.parametrize("cls", LOSS_FACTORIES)
def test_bad_inputs_raise_value_error(cls):
    fn = {lr.ContrastiveLoss: lr.contrastive_loss, lr.TripletLoss: lr.triplet_loss,
          lr.NPairLoss: lr.npair_loss, lr.AngularLoss: lr.angular_loss}[cls]
    for labels, y_pred, match in BAD_INPUTS:
        with pytest.raises(ValueError, match=match):
            cls()(labels, y_pred)
        with pytest.raises(ValueError, match=match):
            fn(labels, y_pred)


@pytest.mark.parametrize("cls", LOSS_FACTORIES)
def test_sample_weight_is_rejected(cls):
    with pytest.raises(ValueError, match="sample_weight"):
        cls()(np.array([0, 0, 1, 1]), np.ones((4, 2), "float32"), sample_weight=np.ones(4))


def test_labels_column_vector_equals_flat():
    labels, x = _batch(lr.TripletLoss, np.random.default_rng(9))
    for loss in (lr.TripletLoss(), lr.ContrastiveLoss(), lr.NPairLoss(), lr.AngularLoss()):
        assert float(_np(loss(labels[:, None], x))) == pytest.approx(float(_np(loss(labels, x))))


def test_large_integer_labels_are_not_rounded():
    # 2**24 and 2**24 + 1 are equal in float32: labels must be compared as given.
    labels = np.array([0, 0, 1, 1], "int64") + 2**24
    x = np.array([[0.0], [2.0], [2.5], [5.0]], "float32")
    for loss in (lr.TripletLoss(margin=1.0, mining="hard"), lr.ContrastiveLoss(), lr.NPairLoss()):
        assert float(_np(loss(labels, x))) == pytest.approx(float(_np(loss(labels - 2**24, x))))


def test_triplet_loss_accepts_a_custom_miner():
    from keras_featreg.miners import _triplets as mining

    labels, x = _batch(lr.TripletLoss, np.random.default_rng(12))
    assert float(_np(lr.triplet_loss(labels, x, mining=mining.batch_hard))) == pytest.approx(
        float(_np(lr.triplet_loss(labels, x, mining="hard")))
    )

    def hardest_negative_for_every_positive_pair(distances, labels):
        hard = mining.batch_hard(distances, labels)
        semi = mining.batch_semi_hard(distances, labels)
        return mining.MinedTriplets(
            semi.positive_distances, ops.expand_dims(hard.negative_distances, 1), semi.mask, False
        )

    expected = 0.0
    d = np.sqrt(((x[:, None].astype(float) - x[None]) ** 2).sum(-1))
    terms = []
    for a in range(len(labels)):
        neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        for p in range(len(labels)):
            if p != a and labels[p] == labels[a] and neg:
                terms.append(max(d[a, p] - min(neg) + 0.2, 0.0))
    expected = sum(terms) / len(terms)
    got = float(_np(lr.triplet_loss(labels, x, mining=hardest_negative_for_every_positive_pair)))
    assert got == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------ serialization


@pytest.mark.parametrize(
    "loss",
    [
        lr.TripletLoss(margin=0.3, mining="all", soft=True, distance="cosine", name="t"),
        lr.ContrastiveLoss(margin=0.5, distance="squared_euclidean", power=2),
        lr.NPairLoss(negatives="all", l2_reg=0.002),
        lr.AngularLoss(alpha=30.0, negatives="all", cross_replica=True),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_config_roundtrip(loss):
    config = loss.get_config()
    json.dumps(config)  # plain values only
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert keras.saving.get_registered_name(type(loss)) == f"keras_featreg>{type(loss).__name__}"


@pytest.mark.parametrize("cls", [lr.TripletLoss, lr.ContrastiveLoss, lr.NPairLoss, lr.AngularLoss])
def test_cross_replica_option(cls):
    # Default False, in the config, validated; outside a distribution strategy (and on JAX)
    # it is a no-op: same value and gradient.
    assert cls().cross_replica is False and cls().get_config()["cross_replica"] is False
    assert cls.from_config(cls(cross_replica=True).get_config()).cross_replica is True
    with pytest.raises(ValueError, match="cross_replica"):
        cls(cross_replica="yes")
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 2).astype("int32")
    x = _normalize(rng.standard_normal((8, 3))).astype("float32")
    value, grad = _value_and_grad(lambda e: cls()(labels, e), x)
    value_cr, grad_cr = _value_and_grad(lambda e: cls(cross_replica=True)(labels, e), x)
    tol = 8 * np.finfo(np.float32).eps  # the same ops: at most a reduction-order rounding
    np.testing.assert_allclose(float(value_cr), float(value), rtol=tol)
    np.testing.assert_allclose(grad_cr, grad, rtol=tol, atol=tol * np.abs(grad).max())


# ------------------------------------------------------------------------------ bounds


def test_bounds_match_paper_formulas():
    b = 144
    assert lr.TripletLoss().bounds(b) == pytest.approx((0.0, 2.2))  # eq. 5, m = 0.2
    assert lr.ContrastiveLoss().bounds(b) == pytest.approx((0.0, 2.0))  # eq. 6, m = 1
    n = b - 2  # the paper's |n| (negatives="all")
    assert lr.NPairLoss(negatives="all").bounds(b) == pytest.approx(
        (math.log(math.e**2 + n) - 2, math.log(math.e**2 * n + 1))  # eq. 8
    )
    lower, upper = lr.AngularLoss(negatives="all").bounds(b)
    assert lower == pytest.approx(math.log(math.exp(-12) * n + 1))  # eq. 12 lower
    assert upper == pytest.approx(math.log(math.exp(6) * n + 1))  # corrected eq. 12 upper
    n = b // 2 - 1  # the other classes' positives
    assert lr.NPairLoss().bounds(b) == pytest.approx(
        (math.log1p(n * math.exp(-2)), math.log1p(n * math.exp(2)))
    )
    assert lr.NPairLoss(l2_reg=0.1).bounds(b)[0] == pytest.approx(math.log1p(n * math.exp(-2)) + 0.05)
    assert lr.TripletLoss(distance="squared_euclidean", margin=0.5).bounds(b) == pytest.approx((0, 4.5))
    assert lr.TripletLoss(soft=True).bounds(b) == pytest.approx((_softplus(-2), _softplus(2)))
    assert lr.ContrastiveLoss(margin=3.0, power=2).bounds(b) == pytest.approx((0, 9.0))
    assert lr.AngularLoss().bounds(np.int64(b)) == lr.AngularLoss().bounds(b)


def test_angular_f_range_is_exact_and_paper_upper_value_is_exceeded():
    for alpha in (20.0, 45.0, 60.0):
        t = math.tan(math.radians(alpha)) ** 2
        f_min, f_max = lr.angular_f_bounds(alpha)
        assert f_min == pytest.approx(-10 * t - 2)
        # Attain f_max: a.p = c with sqrt(2 + 2c) = 2t / (1 + t), n along a + p.
        s = 2 * t / (1 + t)
        c = s * s / 2 - 1
        a = np.array([1.0, 0.0])
        p = np.array([c, math.sqrt(1 - c * c)])
        n = (a + p) / np.linalg.norm(a + p)
        f = 4 * t * (a + p) @ n - 2 * (1 + t) * (a @ p)
        assert f == pytest.approx(f_max)
        # Random unit triples never exceed it.
        rng = np.random.default_rng(int(alpha))
        a, p, n = (_normalize(rng.normal(size=(20000, 3))) for _ in range(3))
        fs = 4 * t * np.sum((a + p) * n, 1) - 2 * (1 + t) * np.sum(a * p, 1)
        assert fs.max() <= f_max + 1e-9 and fs.min() >= f_min - 1e-9
    # At 45 degrees the paper's upper value 6 tan^2 - 2 = 4 is exceeded by a real batch.
    labels = np.array([0, 1, 0, 1])
    c = -0.5
    a = np.array([1.0, 0.0, 0.0])
    p = np.array([c, math.sqrt(1 - c * c), 0.0])
    n = (a + p) / np.linalg.norm(a + p)
    x = np.stack([a, -a, p, n]).astype("float32")  # class 1: anchor -a, positive n
    value = float(_np(lr.AngularLoss()(labels, x)))
    assert value <= lr.AngularLoss().bounds(4)[1] + 1e-6
    # anchor 0 alone has f = 6 > 4: log(1 + e^6) > log(1 + e^4), the paper's upper bound
    assert ref_angular(list(labels), x.astype("float64")) >= 0.5 * math.log1p(math.exp(6.0)) - 1e-5
    assert math.log1p(math.exp(6.0)) > math.log(math.exp(4) * 1 + 1)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_losses_of_normalized_batches_lie_within_bounds(config):
    cls, kwargs, _ = CONFIGS[config]
    loss = cls(**kwargs)
    rng = np.random.default_rng(10)
    for _ in range(5):
        labels, x = _batch(cls, rng, normalized=True, b=12, d=3)
        lower, upper = loss.bounds(12)
        value = float(_np(loss(labels, x)))
        assert lower - 1e-6 <= value <= upper + 1e-6


def test_bounds_are_attained_by_extreme_batches():
    # triplet, hard mining: anchor and negative coincide, positive antipodal -> 2 + m.
    e = np.array([1.0, 0.0], "float32")
    labels = np.array([0, 0, 1, 1])
    x = np.stack([e, -e, e, -e])
    assert float(_np(lr.TripletLoss(mining="hard")(labels, x))) == pytest.approx(2.2)
    # N-pair: anchor = negative, positive antipodal -> upper; anchor = positive, negative
    # antipodal -> lower (one negative per anchor, b = 4).
    lower, upper = lr.NPairLoss().bounds(4)
    assert float(_np(lr.NPairLoss()(labels[[0, 2, 1, 3]], np.stack([e, -e, -e, e])))) == pytest.approx(upper)
    assert float(_np(lr.NPairLoss()(np.array([0, 1, 0, 1]), np.stack([e, -e, e, -e])))) == pytest.approx(lower)
    lower, upper = lr.AngularLoss().bounds(4)
    assert float(_np(lr.AngularLoss()(np.array([0, 1, 0, 1]), np.stack([e, -e, e, -e])))) == pytest.approx(lower)


# ------------------------------------------------------------------ tensorflow-addons


def _fixtures():
    data = np.load(FIXTURES)
    manifest = json.loads(str(data["manifest"]))
    return data, {case["name"]: case for case in manifest["cases"]}


FIXTURE_DATA, FIXTURE_CASES = _fixtures()
EXACT = sorted(n for n, c in FIXTURE_CASES.items() if c["relation"] == "exact")


def test_fixture_manifest_covers_the_tfa_losses():
    used = {c["tfa"] for c in FIXTURE_CASES.values()}
    assert used == {
        "tfa.losses.TripletSemiHardLoss", "tfa.losses.TripletHardLoss",
        "tfa.losses.ContrastiveLoss", "tfa.losses.NpairsLoss",
    }
    assert any(c.get("fallback_pairs", 0) > 0 for c in FIXTURE_CASES.values())
    assert any(c["tfa_kwargs"].get("soft") for c in FIXTURE_CASES.values())


@pytest.mark.parametrize("name", EXACT)
def test_tfa_parity_values_and_gradients(name):
    case = FIXTURE_CASES[name]
    labels = FIXTURE_DATA[f"{name}.labels"]
    x = FIXTURE_DATA[f"{name}.embeddings"]
    loss = getattr(lr, case["ours"])(**case["ours_kwargs"])
    value, grad = _value_and_grad(lambda t: loss(labels, t), x, jit=True)
    np.testing.assert_allclose(value, FIXTURE_DATA[f"{name}.value"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(grad, FIXTURE_DATA[f"{name}.grad"], rtol=0, atol=1e-5)


def test_tfa_hard_with_singletons_differs_as_documented():
    name = "hard_singletons_b10"
    case = FIXTURE_CASES[name]
    labels = FIXTURE_DATA[f"{name}.labels"]
    x = FIXTURE_DATA[f"{name}.embeddings"].astype(np.float64)
    margin = case["ours_kwargs"]["margin"]
    ours = float(_np(lr.TripletLoss(**case["ours_kwargs"])(labels, x.astype("float32"))))
    b = len(labels)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    singleton_terms, n_valid = 0.0, 0
    for a in range(b):
        has_positive = any(labels[p] == labels[a] for p in range(b) if p != a)
        min_negative = min(d[a, n] for n in range(b) if labels[n] != labels[a])
        if has_positive:
            n_valid += 1
        else:
            singleton_terms += max(margin - min_negative, 0.0)
    tfa_value = float(FIXTURE_DATA[f"{name}.value"])
    assert tfa_value * b == pytest.approx(ours * n_valid + singleton_terms, abs=1e-4)
    assert abs(tfa_value - ours) > 1e-3  # the difference is real on this batch


# ----------------------------------------------------------------------------- training


def _pxl_data(p_total, p, l, steps, seed, d_in=6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(p_total, d_in))
    xs, ys = [], []
    for _ in range(steps):
        classes = rng.choice(p_total, size=p, replace=False)
        labels = np.repeat(classes, l)
        xs.append(centres[labels] + 0.6 * rng.normal(size=(p * l, d_in)))
        ys.append(labels)
    return np.concatenate(xs).astype("float32"), np.concatenate(ys).astype("int32")


FIT_CONFIGS = {
    "contrastive": (lr.ContrastiveLoss(margin=1.0), 4, 4),
    "triplet_semihard": (lr.TripletLoss(margin=0.5), 4, 4),
    "triplet_hard": (lr.TripletLoss(margin=0.5, mining="hard"), 4, 4),
    "triplet_hard_soft": (lr.TripletLoss(mining="hard", soft=True), 4, 4),
    "triplet_all": (lr.TripletLoss(margin=0.5, mining="all"), 4, 4),
    "npair": (lr.NPairLoss(), 8, 2),
    "angular": (lr.AngularLoss(), 8, 2),
}


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("config", sorted(FIT_CONFIGS))
def test_model_fit_decreases_the_loss(config, jit_compile):
    loss, p, l = FIT_CONFIGS[config]
    keras.utils.set_random_seed(0)
    x, y = _pxl_data(p_total=12, p=p, l=l, steps=4, seed=1)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(8),
            keras.layers.UnitNormalization(),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss=loss, jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=p * l, epochs=5, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    # (N-pair and soft-margin losses have a floor > 0, hence the modest 10 %.)
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.tensorflow_only
def test_unknown_batch_size_in_tf_graph():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow graph with an unknown batch dimension")
    import tensorflow as tf

    labels, x = _batch(lr.TripletLoss, np.random.default_rng(11))
    pairs_labels, pairs_x = _batch(lr.NPairLoss, np.random.default_rng(11))
    spec = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, x.shape[1]], tf.float32)]
    for config in sorted(CONFIGS):
        cls, kwargs, ref = CONFIGS[config]
        y, e = (pairs_labels, pairs_x) if cls in PAIR_LOSSES else (labels, x)
        fn = tf.function(lambda a, b, loss=cls(**kwargs): loss(a, b), input_signature=spec)
        got = float(fn(tf.constant(y, tf.int64), tf.constant(e)))
        assert got == pytest.approx(_reference(ref, y, e, kwargs), rel=1e-5, abs=1e-5), config
