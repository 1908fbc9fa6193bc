"""Losses built from parts: distances, miners and reducers as objects (issue 13).

Each part against a float64 NumPy reference; the parts composed into the existing
losses (a similarity in the triplet loss, the balanced pair miner in the contrastive
loss, explicit reducers); the Keras contract (get, config round trip, ``.keras`` save and
load keeps every part, ``reduction`` refused with a clear error).
"""

import os

import keras
import numpy as np
import pytest

from keras_featreg import distances, losses, miners, reducers
from keras_featreg.miners import _triplets as mining
from keras_featreg.ops import masked
from tests._helpers import value_and_grad


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _batch(rng, p=6, l=4, d=8):
    labels = rng.permutation(np.repeat(np.arange(p), l))
    x = _unit(rng.normal(size=(p * l, d))).astype("float32")
    return labels, x


def _ref_matrix(x, name):
    x = x.astype(np.float64)
    diff = x[:, None, :] - x[None, :, :]
    sq = (diff ** 2).sum(-1)
    unit = _unit(x)
    return {
        "euclidean": np.sqrt(sq),
        "squared_euclidean": sq,
        "cosine": 1.0 - unit @ unit.T,
        "cosine_similarity": unit @ unit.T,
        "dot_product": x @ x.T,
    }[name]


# --------------------------------------------------------------------------- distances


@pytest.mark.parametrize("name", distances.NAMES)
def test_distance_objects_match_float64(name, rng):
    _, x = _batch(rng)
    got = np.asarray(distances.get(name)(x), dtype=np.float64)
    np.testing.assert_allclose(got, _ref_matrix(x, name), atol=2e-6)
    d = distances.get(name)
    assert d.is_inverted == (name in ("cosine_similarity", "dot_product"))
    assert distances.get(d) is d
    assert distances.get(keras.saving.serialize_keras_object(d)) == d


def test_distance_get_rejects_unknown_names():
    with pytest.raises(ValueError, match="Received: distance='L1'"):
        distances.get("L1")
    with pytest.raises(ValueError, match="Received: distance='manhattan'"):
        losses.TripletLoss(distance="manhattan")


def test_distance_orientation_helpers():
    sim = distances.CosineSimilarity()
    assert np.asarray(sim.as_distance(np.array([0.5]))).tolist() == [-0.5]
    assert bool(np.asarray(sim.closer(np.array(0.9), np.array(0.1))))
    assert not bool(np.asarray(distances.EuclideanDistance().closer(np.array(0.9), np.array(0.1))))


# ---------------------------------------------------------------------------- reducers


def test_reducers_match_numpy(rng):
    values = rng.uniform(-0.5, 2.0, size=(7, 5)).astype("float32")
    values[values < 0] = 0.0
    mask = rng.uniform(size=(7, 5)) < 0.6
    mask[3] = False  # an anchor without terms
    m = mask.astype(np.float64)
    v = values.astype(np.float64)
    expected = {
        "mean": (v * m).sum() / m.sum(),
        "mean_nonzero": (v * m).sum() / (m * (v > 0)).sum(),
        "sum": (v * m).sum(),
        "per_anchor_mean": np.mean([(v[i] * m[i]).sum() / m[i].sum() for i in range(7) if m[i].any()]),
    }
    for name, want in expected.items():
        got = float(reducers.get(name)(values, mask))
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", reducers.NAMES)
def test_reducers_are_zero_with_zero_gradient_when_empty(name):
    mask = np.zeros((3, 4), bool)
    value, grad = value_and_grad(lambda t: reducers.get(name)(t, mask),
                                 np.ones((3, 4), "float32"))
    assert float(value) == 0.0 and np.all(grad == 0.0)


def test_reducer_get_rejects_unknown_names():
    with pytest.raises(ValueError, match="Received: reducer='median'"):
        reducers.get("median")


# ------------------------------------------------------------------------------ miners


def test_balanced_pair_miner_selects_the_hardest_pairs_symmetrically(rng):
    labels, x = _batch(rng, p=9, l=4, d=16)  # 36 x 4 -> b = 36 ... the paper's layout at 1/4
    d = _ref_matrix(x, "euclidean")
    mined = miners.BalancedPairMiner()(d.astype("float32"), labels)
    pos, neg = np.asarray(mined.positive), np.asarray(mined.negative)
    b = len(labels)
    assert np.array_equal(pos, pos.T) and np.array_equal(neg, neg.T)
    assert np.triu(pos, 1).sum() == b // 2 and np.triu(neg, 1).sum() == b // 2
    same = labels[:, None] == labels[None, :]
    iu = np.triu_indices(b, 1)
    pos_d = d[iu][same[iu]]
    neg_d = d[iu][~same[iu]]
    # the selected positives are the farthest, the selected negatives the closest
    assert d[np.triu(pos, 1)].min() >= np.sort(pos_d)[-(b // 2)] - 1e-6
    assert d[np.triu(neg, 1)].max() <= np.sort(neg_d)[b // 2 - 1] + 1e-6


def test_balanced_pair_miner_gives_fewer_pairs_when_fewer_exist():
    labels = np.array([0, 0, 1, 1])  # 2 positive pairs, 4 negative pairs
    d = np.random.default_rng(0).uniform(size=(4, 4)).astype("float32")
    d = (d + d.T) / 2
    mined = miners.BalancedPairMiner(num_pairs=3)(d, labels)
    assert np.triu(np.asarray(mined.positive), 1).sum() == 2
    assert np.triu(np.asarray(mined.negative), 1).sum() == 3


def _ref_ms_miner(s, labels, eps):
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    pos = same & ~np.eye(b, dtype=bool)
    neg = ~same
    keep_pos = np.zeros_like(pos)
    keep_neg = np.zeros_like(neg)
    for i in range(b):
        if pos[i].any() and neg[i].any():
            keep_neg[i] = neg[i] & (s[i] + eps > s[i][pos[i]].min())
            keep_pos[i] = pos[i] & (s[i] - eps < s[i][neg[i]].max())
    return keep_pos, keep_neg


def test_multi_similarity_miner_matches_its_definition(rng):
    labels, x = _batch(rng, p=5, l=4, d=6)
    s = _ref_matrix(x, "cosine_similarity").astype("float32")
    mined = miners.MultiSimilarityMiner(0.1)(s, labels, distance="cosine_similarity")
    want_pos, want_neg = _ref_ms_miner(s.astype(np.float64), labels, 0.1)
    assert np.array_equal(np.asarray(mined.positive), want_pos)
    assert np.array_equal(np.asarray(mined.negative), want_neg)
    # a distance is handled in its own orientation: the same selection from 1 - cos
    mined_d = miners.MultiSimilarityMiner(0.1)(1.0 - s, labels, distance="cosine")
    assert np.array_equal(np.asarray(mined_d.positive), want_pos)


def test_pair_margin_miner(rng):
    labels, x = _batch(rng)
    d = _ref_matrix(x, "euclidean").astype("float32")
    mined = miners.PairMarginMiner(pos_margin=1.0, neg_margin=1.2)(d, labels)
    same = labels[:, None] == labels[None, :]
    eye = np.eye(len(labels), dtype=bool)
    assert np.array_equal(np.asarray(mined.positive), same & ~eye & (d > 1.0))
    assert np.array_equal(np.asarray(mined.negative), ~same & (d < 1.2))


def test_miner_get_and_errors():
    assert isinstance(miners.get("semi_hard"), miners.SemiHardMiner)
    assert isinstance(miners.get(mining.batch_all), miners.BatchAllMiner)
    with pytest.raises(ValueError, match="Received: miner='hardest'"):
        miners.get("hardest")
    with pytest.raises(ValueError, match="Received: num_pairs=0"):
        miners.BalancedPairMiner(num_pairs=0)
    with pytest.raises(ValueError, match="triplet miner.*Received: miner='balanced_pair'"):
        losses.TripletLoss(miner="balanced_pair")
    with pytest.raises(ValueError, match="pair miner.*Received: miner='hard'"):
        losses.ContrastiveLoss(miner="hard")


# ------------------------------------------------------------------ parts in the losses


def _ref_triplet_semi_hard_sim(s, labels, margin):
    """FaceNet semi-hard with a similarity: the negative "farther" than p has s_an < s_ap."""
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    total, count = 0.0, 0
    for a in range(b):
        negs = s[a][~same[a]]
        for p in range(b):
            if p == a or not same[a, p] or negs.size == 0:
                continue
            farther = negs[negs < s[a, p]]
            s_an = farther.max() if farther.size else negs.min()
            total += max(s_an - s[a, p] + margin, 0.0)
            count += 1
    return total / max(count, 1)


def test_triplet_loss_with_a_similarity_is_pml_convention(rng):
    labels, x = _batch(rng, p=4, l=3, d=5)
    s = _ref_matrix(x, "cosine_similarity")
    got = float(losses.TripletLoss(margin=0.3, distance="cosine_similarity")(labels, x))
    np.testing.assert_allclose(got, _ref_triplet_semi_hard_sim(s, labels, 0.3), rtol=1e-5)
    # cosine similarity vs cosine distance: the same hinge (d = 1 - s)
    got_d = float(losses.TripletLoss(margin=0.3, distance="cosine")(labels, x))
    np.testing.assert_allclose(got, got_d, rtol=1e-5, atol=1e-6)


def _ref_contrastive_on_mask(d, pos, neg, margin):
    terms = np.where(pos, d, np.where(neg, np.maximum(margin - d, 0.0), 0.0))
    m = pos | neg
    return (terms * m).sum() / m.sum()


def test_contrastive_loss_with_the_balanced_pair_miner(rng):
    labels, x = _batch(rng, p=9, l=4, d=4)
    d = _ref_matrix(x, "euclidean")
    # mine on the library's own matrix, as the loss does (the selection is then the same on
    # every CPU; the values are compared against float64)
    mined = miners.BalancedPairMiner()(distances.EuclideanDistance()(x), labels)
    pos, neg = np.asarray(mined.positive), np.asarray(mined.negative)
    want = _ref_contrastive_on_mask(d, pos, neg, 1.0)
    got = float(losses.ContrastiveLoss(miner="balanced_pair")(labels, x))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # all pairs: diluted by the inactive negative pairs
    everything = float(losses.ContrastiveLoss()(labels, x))
    assert everything < got


def test_batch_all_reducers_from_sums_equal_the_triplet_tensor(rng):
    labels, x = _batch(rng, p=4, l=3, d=3)
    for name in ("mean", "sum", "mean_nonzero", "per_anchor_mean"):
        fast = losses.TripletLoss(mining="all", reducer=name)
        ref = losses.TripletLoss(mining=lambda dd, yy: mining.batch_all(dd, yy), reducer=name)
        v_fast, g_fast = value_and_grad(lambda t: fast.call(labels, t), x)
        v_ref, g_ref = value_and_grad(lambda t: ref.call(labels, t), x)
        np.testing.assert_allclose(v_fast, v_ref, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(g_fast, g_ref, atol=1e-5, err_msg=name)


def test_a_user_callable_miner_in_the_class(rng):
    labels, x = _batch(rng)
    custom = losses.TripletLoss(mining=lambda d, y: mining.batch_hard(d, y))
    np.testing.assert_allclose(float(custom(labels, x)),
                               float(losses.TripletLoss(mining="hard")(labels, x)), rtol=1e-6)


def test_reduction_is_refused_with_a_clear_error():
    for cls in (losses.TripletLoss, losses.ContrastiveLoss, losses.NPairLoss, losses.AngularLoss):
        with pytest.raises(ValueError, match="reducer=.*Received: reduction='sum'"):
            cls(reduction="sum")


def test_losses_get_by_name():
    assert isinstance(losses.get("triplet"), losses.TripletLoss)
    assert isinstance(losses.get("ContrastiveLoss", margin=0.5), losses.ContrastiveLoss)
    assert isinstance(losses.get("npair_loss"), losses.NPairLoss)
    with pytest.raises(ValueError, match="identifier='tripletz'"):
        losses.get("tripletz")


PARTS = [
    losses.TripletLoss(margin=0.1, miner=miners.BatchHardMiner(),
                       distance=distances.CosineSimilarity(), reducer="per_anchor_mean"),
    losses.ContrastiveLoss(miner=miners.BalancedPairMiner(num_pairs=5), reducer="mean_nonzero",
                           distance="squared_euclidean"),
    losses.ContrastiveLoss(miner=miners.PairMarginMiner(0.1, 0.9)),
    losses.TripletLoss(mining="all", reducer=reducers.SumReducer()),
]


@pytest.mark.parametrize("loss", PARTS, ids=lambda l: type(l).__name__)
def test_config_round_trip_keeps_every_part(loss, rng):
    config = keras.saving.serialize_keras_object(loss)
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is type(loss)
    assert again.distance == loss.distance and again.miner == loss.miner
    assert again.reducer == loss.reducer
    labels, x = _batch(rng)
    np.testing.assert_allclose(float(again(labels, x)), float(loss(labels, x)), rtol=1e-6)


def test_keras_save_and_load_keep_every_part(tmp_path, rng):
    loss = PARTS[0]
    inputs = keras.Input((6,))
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=loss)
    labels = np.repeat(np.arange(4), 4)
    x = rng.normal(size=(16, 6)).astype("float32")
    model.fit(x, labels, batch_size=16, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.loss
    assert type(restored) is losses.TripletLoss
    assert restored.miner == loss.miner and restored.distance == loss.distance
    assert restored.reducer == loss.reducer and restored.margin == loss.margin
    np.testing.assert_allclose(loaded.evaluate(x, labels, batch_size=16, verbose=0),
                               model.evaluate(x, labels, batch_size=16, verbose=0), rtol=1e-5)


def test_the_evaluation_accepts_the_distance_objects(rng):
    from keras_featreg.evaluation import map_at_r, recall_at_k

    labels, x = _batch(rng, p=8, l=4, d=5)
    for name, metric in (("euclidean", "euclidean"), ("squared_euclidean", "euclidean"),
                         ("cosine", "cosine"), ("cosine_similarity", "cosine"),
                         ("dot_product", "dot_product")):
        got = recall_at_k(x, labels, ks=(1, 4), metric=distances.get(name))
        assert got == recall_at_k(x, labels, ks=(1, 4), metric=metric), name
    assert map_at_r(x, labels, metric=distances.CosineSimilarity()) == map_at_r(x, labels,
                                                                                metric="cosine")


class _NearestNegativeMiner(miners.Miner):
    """A user miner: every positive pair, and each anchor's single closest negative."""

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        import keras.ops as ops

        d = distance.as_distance(matrix)
        closest, _ = masked.masked_min(d, negative, axis=1)
        keep = ops.logical_and(negative, ops.equal(d, ops.expand_dims(closest, 1)))
        return miners.MinedPairs(positive, keep)


def test_a_user_miner_subclass_composes_with_pair_losses(rng):
    labels, x = _batch(rng, p=4, l=3, d=5)
    d = _ref_matrix(x, "euclidean")
    same = labels[:, None] == labels[None, :]
    pos = same & ~np.eye(len(labels), dtype=bool)
    d_lib = np.asarray(distances.EuclideanDistance()(x), dtype=np.float64)  # the loss's matrix
    dn = np.where(same, np.inf, d_lib)
    neg = dn == dn.min(axis=1, keepdims=True)
    want = _ref_contrastive_on_mask(d, pos, neg, 1.0)
    got = float(losses.ContrastiveLoss(miner=_NearestNegativeMiner())(labels, x))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ms = losses.MultiSimilarityLoss(miner=_NearestNegativeMiner())
    assert np.isfinite(float(ms(labels, x)))
