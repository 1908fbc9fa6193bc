"""Records tensorflow-addons ranking-loss values and gradients as test fixtures.

tensorflow-addons 0.23 is end-of-life and does not import on TensorFlow >= 2.16, so this
script runs in a separate environment and writes ``tests/fixtures/tfa_parity.npz``, which
``tests/test_losses_ranking.py`` compares ``keras_featreg.losses`` against::

    python3 -m venv /tmp/tfa_venv
    /tmp/tfa_venv/bin/pip install tensorflow-cpu==2.15.1 tensorflow-addons==0.23.0
    /tmp/tfa_venv/bin/python tools/make_tfa_fixtures.py [--out tests/fixtures/tfa_parity.npz]

Every case stores float32 ``labels`` (b,), ``embeddings`` (b, d), TFA's loss ``value``
and its gradient ``grad`` w.r.t. the embeddings, plus a JSON manifest (key
``manifest``) naming the TFA loss and arguments and the keras-featreg loss and arguments
that must reproduce it. Cases marked ``"relation": "exact"`` must match to 1e-5; the
``hard_singletons`` case documents a deliberate difference (see the manifest note).

Pairs-based TFA losses take other inputs than ours; the script builds them from the
same embeddings:

* ``tfa.losses.ContrastiveLoss`` takes (pair label, pair distance) lists: it is fed every
  unordered pair ``i < j`` of the batch with ``tfa.losses.metric_learning.
  pairwise_distance``; ours (``ContrastiveLoss(power=2)``) takes labels and embeddings.
* ``tfa.losses.NpairsLoss`` takes the similarity matrix ``anchors @ positives.T`` and
  one label per pair; ours takes the whole ``p x 2`` batch (first occurrence of a class =
  anchor, second = positive), stored here in a shuffled order.
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_addons as tfa
from tensorflow_addons.losses import metric_learning

SEED = 20240611


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pxl_labels(rng, p, l):
    labels = np.repeat(rng.choice(100, size=p, replace=False), l)
    return rng.permutation(labels)


def _value_and_grad(fn, embeddings):
    x = tf.Variable(embeddings)
    with tf.GradientTape() as tape:
        value = fn(x)
    grad = tf.convert_to_tensor(tape.gradient(value, x))
    return float(value.numpy()), np.asarray(grad.numpy(), dtype=np.float32)


def _triplet_case(name, tfa_cls, tfa_kwargs, ours_kwargs, labels, embeddings, note=""):
    loss = tfa_cls(**tfa_kwargs)
    value, grad = _value_and_grad(lambda x: loss(tf.constant(labels), x), embeddings)
    return {
        "name": name,
        "tfa": f"tfa.losses.{tfa_cls.__name__}",
        "tfa_kwargs": tfa_kwargs,
        "ours": "TripletLoss",
        "ours_kwargs": ours_kwargs,
        "relation": "exact" if not note else "documented",
        "note": note,
    }, labels, embeddings, value, grad


def _semi_hard_fallbacks(labels, embeddings):
    """Number of positive pairs with no semi-hard negative (so TFA falls back)."""
    d = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    count = 0
    for a in range(len(labels)):
        for p in range(len(labels)):
            if a == p or labels[a] != labels[p]:
                continue
            negatives = d[a][labels != labels[a]]
            if not np.any(negatives > d[a, p]):
                count += 1
    return count


def build_cases():
    rng = np.random.default_rng(SEED)
    f32 = np.float32
    cases = []

    # ---- TripletSemiHardLoss <-> TripletLoss(mining="semi-hard")
    labels = rng.integers(0, 6, size=32)  # random labels: singletons possible
    emb = _normalize(rng.normal(size=(32, 8))).astype(f32)
    cases.append(_triplet_case(
        "semihard_l2_normalized_b32", tfa.losses.TripletSemiHardLoss,
        {"margin": 0.2, "distance_metric": "L2"},
        {"mining": "semi-hard", "distance": "euclidean", "margin": 0.2}, labels, emb))

    labels = _pxl_labels(rng, 4, 6)
    emb = (3.0 * rng.normal(size=(24, 5))).astype(f32)
    cases.append(_triplet_case(
        "semihard_l2_unnormalized_b24", tfa.losses.TripletSemiHardLoss,
        {"margin": 1.0, "distance_metric": "L2"},
        {"mining": "semi-hard", "distance": "euclidean", "margin": 1.0}, labels, emb))

    # Wide classes, close class centres: many positives are farther than every negative.
    labels = _pxl_labels(rng, 3, 4)
    centres = 0.3 * rng.normal(size=(100, 4))
    emb = (centres[labels] + 2.0 * rng.normal(size=(12, 4))).astype(f32)
    fallbacks = _semi_hard_fallbacks(labels, emb)
    assert 0 < fallbacks < 36, fallbacks
    case = _triplet_case(
        "semihard_fallback_b12", tfa.losses.TripletSemiHardLoss,
        {"margin": 0.5, "distance_metric": "L2"},
        {"mining": "semi-hard", "distance": "euclidean", "margin": 0.5}, labels, emb)
    case[0]["fallback_pairs"] = fallbacks
    cases.append(case)

    labels = _pxl_labels(rng, 5, 4)
    emb = _normalize(rng.normal(size=(20, 6))).astype(f32)
    cases.append(_triplet_case(
        "semihard_squared_l2_normalized_b20", tfa.losses.TripletSemiHardLoss,
        {"margin": 0.5, "distance_metric": "squared-L2"},
        {"mining": "semi-hard", "distance": "squared_euclidean", "margin": 0.5}, labels, emb))

    labels = _pxl_labels(rng, 4, 4)
    emb = (2.0 * rng.normal(size=(16, 6))).astype(f32)
    cases.append(_triplet_case(
        "semihard_angular_unnormalized_b16", tfa.losses.TripletSemiHardLoss,
        {"margin": 0.3, "distance_metric": "angular"},
        {"mining": "semi-hard", "distance": "cosine", "margin": 0.3}, labels, emb))

    # ---- TripletHardLoss <-> TripletLoss(mining="hard")
    labels = _pxl_labels(rng, 6, 4)
    emb = _normalize(rng.normal(size=(24, 16))).astype(f32)
    cases.append(_triplet_case(
        "hard_l2_normalized_b24", tfa.losses.TripletHardLoss,
        {"margin": 0.2, "soft": False, "distance_metric": "L2"},
        {"mining": "hard", "distance": "euclidean", "margin": 0.2}, labels, emb))

    labels = _pxl_labels(rng, 3, 6)
    emb = (2.5 * rng.normal(size=(18, 7))).astype(f32)
    cases.append(_triplet_case(
        "hard_l2_unnormalized_b18", tfa.losses.TripletHardLoss,
        {"margin": 1.0, "soft": False, "distance_metric": "L2"},
        {"mining": "hard", "distance": "euclidean", "margin": 1.0}, labels, emb))

    labels = _pxl_labels(rng, 6, 4)
    emb = _normalize(rng.normal(size=(24, 8))).astype(f32)
    cases.append(_triplet_case(
        "hard_soft_normalized_b24", tfa.losses.TripletHardLoss,
        {"soft": True, "distance_metric": "L2"},
        {"mining": "hard", "soft": True, "distance": "euclidean"}, labels, emb))

    labels = _pxl_labels(rng, 4, 3)
    emb = (2.0 * rng.normal(size=(12, 5))).astype(f32)
    cases.append(_triplet_case(
        "hard_soft_unnormalized_b12", tfa.losses.TripletHardLoss,
        {"soft": True, "distance_metric": "L2"},
        {"mining": "hard", "soft": True, "distance": "euclidean"}, labels, emb))

    labels = _pxl_labels(rng, 4, 4)
    emb = (1.5 * rng.normal(size=(16, 6))).astype(f32)
    cases.append(_triplet_case(
        "hard_angular_unnormalized_b16", tfa.losses.TripletHardLoss,
        {"margin": 0.3, "soft": False, "distance_metric": "angular"},
        {"mining": "hard", "distance": "cosine", "margin": 0.3}, labels, emb))

    labels = _pxl_labels(rng, 5, 4)
    emb = _normalize(rng.normal(size=(20, 6))).astype(f32)
    cases.append(_triplet_case(
        "hard_squared_l2_normalized_b20", tfa.losses.TripletHardLoss,
        {"margin": 0.5, "soft": False, "distance_metric": "squared-L2"},
        {"mining": "hard", "distance": "squared_euclidean", "margin": 0.5}, labels, emb))

    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 5])  # classes 2, 4, 5 are singletons
    emb = _normalize(rng.normal(size=(10, 4))).astype(f32)
    cases.append(_triplet_case(
        "hard_singletons_b10", tfa.losses.TripletHardLoss,
        {"margin": 0.2, "soft": False, "distance_metric": "L2"},
        {"mining": "hard", "distance": "euclidean", "margin": 0.2}, labels, emb,
        note=(
            "TFA keeps anchors without a positive, with D[a, a] = 0 as hardest positive "
            "(term max(margin - min_n D[a, n], 0)) and averages over all b anchors; ours "
            "drops them. Relation: tfa * b == ours * n_valid + sum_singletons "
            "max(margin - min_n D[a, n], 0)."
        )))

    # ---- ContrastiveLoss (pairs) <-> ContrastiveLoss(power=2) (all pairs of the batch)
    for name, p, l, d, scale, margin in (
        ("contrastive_normalized_b16_m1", 4, 4, 8, None, 1.0),
        ("contrastive_unnormalized_b20_m0.5", 5, 4, 4, 0.3, 0.5),
    ):
        labels = _pxl_labels(rng, p, l)
        raw = rng.normal(size=(p * l, d))
        emb = (_normalize(raw) if scale is None else scale * raw).astype(f32)
        rows, cols = np.triu_indices(p * l, k=1)
        pair_labels = (labels[rows] == labels[cols]).astype(np.int32)
        loss = tfa.losses.ContrastiveLoss(margin=margin)

        def fn(x, loss=loss, rows=rows, cols=cols, pair_labels=pair_labels):
            dist = metric_learning.pairwise_distance(x, squared=False)
            pair_dist = tf.gather_nd(dist, np.stack([rows, cols], axis=1))
            return loss(tf.constant(pair_labels), pair_dist)

        value, grad = _value_and_grad(fn, emb)
        cases.append(({
            "name": name, "tfa": "tfa.losses.ContrastiveLoss", "tfa_kwargs": {"margin": margin},
            "tfa_inputs": "every unordered pair i < j: (y_i == y_j, pairwise_distance L2)",
            "ours": "ContrastiveLoss",
            "ours_kwargs": {"margin": margin, "distance": "euclidean", "power": 2},
            "relation": "exact", "note": "",
        }, labels, emb, value, grad))

    # ---- NpairsLoss (similarity matrix) <-> NPairLoss (p x 2 batch)
    for name, n, d, scale in (("npairs_normalized_n8", 8, 8, None),
                              ("npairs_unnormalized_n12", 12, 6, 1.5)):
        pair_labels = rng.choice(1000, size=n, replace=False)
        raw = rng.normal(size=(2 * n, d))
        emb = (_normalize(raw) if scale is None else scale * raw).astype(f32)
        # Shuffle, then make the first occurrence of each class its anchor.
        order = rng.permutation(2 * n)
        labels = np.concatenate([pair_labels, pair_labels])[order]
        anchor_idx = np.array([np.flatnonzero(labels == c)[0] for c in pair_labels])
        positive_idx = np.array([np.flatnonzero(labels == c)[1] for c in pair_labels])
        loss = tfa.losses.NpairsLoss()

        def fn(x, loss=loss, a=anchor_idx, p=positive_idx, pl=pair_labels):
            sim = tf.matmul(tf.gather(x, a), tf.gather(x, p), transpose_b=True)
            return loss(tf.constant(pl), sim)

        value, grad = _value_and_grad(fn, emb)
        cases.append(({
            "name": name, "tfa": "tfa.losses.NpairsLoss", "tfa_kwargs": {},
            "tfa_inputs": "y_true = one label per pair, y_pred = anchors @ positives.T",
            "ours": "NPairLoss", "ours_kwargs": {"negatives": "positives", "l2_reg": 0.0},
            "relation": "exact", "note": "",
        }, labels, emb, value, grad))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--out", default=os.path.join(here, os.pardir, "tests", "fixtures", "tfa_parity.npz")
    )
    args = parser.parse_args()
    arrays, manifest = {}, []
    for meta, labels, emb, value, grad in build_cases():
        name = meta["name"]
        arrays[f"{name}.labels"] = np.asarray(labels, dtype=np.int32)
        arrays[f"{name}.embeddings"] = np.asarray(emb, dtype=np.float32)
        arrays[f"{name}.value"] = np.asarray(value, dtype=np.float32)
        arrays[f"{name}.grad"] = np.asarray(grad, dtype=np.float32)
        manifest.append(meta)
        print(f"{name:40s} {meta['tfa']:32s} value={value:.6f}")
    arrays["manifest"] = np.asarray(json.dumps({
        "generator": "tools/make_tfa_fixtures.py",
        "tensorflow": tf.__version__,
        "tensorflow_addons": tfa.__version__,
        "seed": SEED,
        "cases": manifest,
    }, indent=1))
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {len(manifest)} cases to {out}")


if __name__ == "__main__":
    main()
