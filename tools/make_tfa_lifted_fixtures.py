"""Records tensorflow-addons ``LiftedStructLoss`` values and gradients as test fixtures.

tensorflow-addons 0.23 does not import on TensorFlow >= 2.16, so this script runs in a
separate environment (the one of ``tools/make_tfa_fixtures.py``) and writes
``tests/fixtures/tfa_lifted.npz``::

    python3 -m venv /tmp/tfa_venv
    /tmp/tfa_venv/bin/pip install tensorflow-cpu==2.15.1 tensorflow-addons==0.23.0
    /tmp/tfa_venv/bin/python tools/make_tfa_lifted_fixtures.py [--out tests/fixtures/tfa_lifted.npz]

Format: as ``tools/make_pml_fixtures.py`` (``<case>/labels`` int64 (b,),
``<case>/embeddings`` float32 (b, d), ``<case>/value``, ``<case>/grad`` w.r.t. the
embeddings, JSON manifest under ``manifest`` with ``tfa``, ``ours``, ``layout``,
``relation``, ``note``). TFA's lifted loss multiplies by float32 masks, so it only runs in
float32: values and gradients are float32 computations (stored as float32); compare with a
relative tolerance of ~1e-5. ``--check`` recomputes the values with the NumPy float64
formula below.

What ``tfa.losses.LiftedStructLoss(margin=1.0)`` computes (tensorflow_addons/losses/lifted.py,
``lifted_struct_loss``), embeddings NOT normalized:

* D = ``metric_learning.pairwise_distance(x)``: Euclidean distance via
  ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, clamped at 0; entries that are <= 0 are set to 0 with
  zero gradient (sqrt(0 + 1e-16) * 0); the diagonal is set to 0.
* diff = margin - D, N(i) = {k : y_k != y_i}.
* J_ij = log( sum_{k in N(i)} exp(diff_ik) + sum_{l in N(j)} exp(diff_jl) ) + D_ij, computed
  with a stabilising shift M_ij = max(m_i, m_j), m_i = max_{k in N(i)} diff_ik (for a row
  without negatives m_i = min_k diff_ik); the shift is not stop-gradient'ed but cancels
  exactly, in value and gradient.
* mask_pos = (y_i == y_j) - I (ORDERED positive pairs, diagonal removed);
  num_positives = sum(mask_pos) / 2 = |P| (unordered positive pairs).
* loss = 0.25 * sum_{i,j} max(J_ij * mask_pos_ij, 0)^2 / |P|
       = (1 / (2 |P|)) * sum_{unordered (i, j) in P} [J_ij]_+^2.
  This is the same number as PML's ``LiftedStructureLoss(neg_margin=margin, pos_margin=0,
  distance=LpDistance(normalize_embeddings=False))`` (see tools/make_pml_fixtures.py) on
  every batch with at least one positive and one negative pair.

Degenerate batches (recorded as TFA gives them):

* no positive pair (every class once, b = 2 of two classes): 0 / 0 -> NaN.
* no negative pair (one class only, b = 2 of one class): the inner sums are empty,
  log(0) = -inf, so J_ij = -inf; positive pairs give max(-inf, 0) = 0, but on the diagonal
  (mask 0) -inf * 0 = NaN, which tf.maximum propagates: value and gradient NaN.
  (PML returns 0 with zero gradient in all four "no positive / no negative" cases.)
* identical rows: D = 0 everywhere with zero gradient, so the gradient is 0.
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_addons as tfa

SEED = 20261215


def _f32(x):
    return np.asarray(x, dtype=np.float32)


def _unit(x):
    return _f32(x / np.linalg.norm(x, axis=1, keepdims=True))


def _pxl(rng, p, l, pool=100):
    labels = np.repeat(rng.choice(pool, size=p, replace=False), l)
    return rng.permutation(labels).astype(np.int64)


def _value_and_grad(loss, labels, embeddings):
    # A constant, not a tf.Variable: lifted_struct_loss is a tf.function, and a trace
    # would keep referring to the (deleted) variable of the previous case of the same shape.
    x = tf.constant(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(tf.constant(labels.astype(np.int32)), x)
    grad = tf.convert_to_tensor(tape.gradient(value, x))
    return np.float32(value.numpy()), np.asarray(grad.numpy(), dtype=np.float32)


def build_cases():
    rng = np.random.default_rng(SEED)
    specs = [
        # name, labels, embeddings, margin, layout
        ("lifted_36x4_d32", _pxl(rng, 36, 4), _f32(0.3 * rng.normal(size=(144, 32))), 1.0,
         "shuffled 36x4, un-normalized (scale 0.3)"),
        ("lifted_8x3_d8_unit", _pxl(rng, 8, 3), _unit(rng.normal(size=(24, 8))), 1.0,
         "shuffled 8x3, unit-normalized"),
        ("lifted_8x3_d8_unnormalized", _pxl(rng, 8, 3), _f32(0.5 * rng.normal(size=(24, 8))),
         1.0, "shuffled 8x3, un-normalized (scale 0.5)"),
        ("lifted_6x4_d8_margin0.5", _pxl(rng, 6, 4), _f32(0.4 * rng.normal(size=(24, 8))), 0.5,
         "shuffled 6x4, margin 0.5"),
        ("lifted_random_labels_b16_d8", rng.integers(0, 5, size=16).astype(np.int64),
         _f32(0.5 * rng.normal(size=(16, 8))), 1.0,
         "16 random labels of 5 classes (singletons possible)"),
        ("lifted_far_apart_b12_d8", _pxl(rng, 3, 4), None, 1.0,
         "separated classes: hinge inactive (J < 0) for some positive pairs"),
        ("lifted_identical_rows_b6", np.array([0, 0, 1, 1, 2, 2]),
         np.repeat(_f32(rng.normal(size=(1, 8))), 6, axis=0), 1.0, "degenerate: identical rows"),
        ("lifted_one_class_b5", np.full(5, 4), _f32(0.5 * rng.normal(size=(5, 8))), 1.0,
         "degenerate: one class only"),
        ("lifted_every_class_once_b6", rng.choice(50, 6, replace=False),
         _f32(0.5 * rng.normal(size=(6, 8))), 1.0, "degenerate: every class once"),
        ("lifted_b2_same_class", np.array([3, 3]), _f32(0.5 * rng.normal(size=(2, 8))), 1.0,
         "degenerate: b = 2, one positive pair"),
        ("lifted_b2_two_classes", np.array([3, 5]), _f32(0.5 * rng.normal(size=(2, 8))), 1.0,
         "degenerate: b = 2, one negative pair"),
    ]
    cases = []
    for name, labels, emb, margin, layout in specs:
        labels = np.asarray(labels, np.int64)
        if emb is None:  # separated clusters: the first spread with some J_ij < 0 and some > 0
            centres, noise = rng.normal(size=(100, 8)), rng.normal(size=(len(labels), 8))
            for spread in np.arange(1.0, 10.0, 0.25):
                emb = _f32(spread * centres[labels] + 0.3 * noise)
                active, total = _active_pairs(labels, emb, margin)
                if 0 < active < total:
                    break
            assert 0 < active < total, (active, total)
            layout += f" ({active} of {total} positive pairs active)"
        loss = tfa.losses.LiftedStructLoss(margin=margin)
        value, grad = _value_and_grad(loss, labels, emb)
        finite = bool(np.isfinite(value) and np.all(np.isfinite(grad)))
        note = "(1/(2|P|)) sum over unordered positive pairs of [J_ij]_+^2, float32"
        if not finite:
            note = "TFA gives a non-finite value or gradient here (see docstring); " + note
        cases.append(({
            "name": name, "tfa": "tfa.losses.LiftedStructLoss", "tfa_kwargs": {"margin": margin},
            "ours": {"class": "LiftedStructureLoss",
                     "kwargs": {"neg_margin": margin, "pos_margin": 0}},
            "pml_equivalent": "LiftedStructureLoss(neg_margin=margin, pos_margin=0, "
                              "distance=LpDistance(normalize_embeddings=False))",
            "layout": layout, "relation": "exact" if finite else "differs", "note": note,
        }, labels, emb, value, grad))
    return cases


def _active_pairs(y, x, m):
    """(number of unordered positive pairs with J_ij > 0, number of positive pairs)."""
    x = x.astype(np.float64)
    D = np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, -1), 0.0))
    js = [np.log(np.sum(np.exp(np.concatenate([m - D[i, y != y[i]], m - D[j, y != y[j]]]))))
          + D[i, j] for i in range(len(y)) for j in range(i + 1, len(y)) if y[i] == y[j]]
    return int(np.sum(np.array(js) > 0)), len(js)


def _ref_lifted(y, x, m):
    x = x.astype(np.float64)
    D = np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, -1), 0.0))
    terms = []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            if y[i] == y[j]:
                v = np.concatenate([m - D[i, y != y[i]], m - D[j, y != y[j]]])
                if len(v) == 0:
                    terms.append(0.0)
                    continue
                mx = v.max()
                J = mx + np.log(np.sum(np.exp(v - mx))) + D[i, j]
                terms.append(max(J, 0.0) ** 2)
    if not terms:
        return float("nan")
    return float(np.sum(terms) / (2 * len(terms)))


def check(path):
    data = np.load(path)
    manifest = json.loads(str(data["manifest"]))
    n = 0
    for meta in manifest["cases"]:
        name = meta["name"]
        v = float(data[f"{name}/value"])
        if meta["relation"] != "exact":
            continue
        ref = _ref_lifted(data[f"{name}/labels"], data[f"{name}/embeddings"],
                          meta["tfa_kwargs"]["margin"])
        assert abs(ref - v) <= 2e-6 * max(1.0, abs(v)), (name, ref, v)
        n += 1
    print(f"NumPy float64 formula agrees with {n} stored float32 values (rel. 2e-6)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--out", default=os.path.join(here, os.pardir, "tests", "fixtures", "tfa_lifted.npz"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    if not args.check:
        arrays, manifest = {}, []
        for meta, labels, emb, value, grad in build_cases():
            name = meta["name"]
            arrays[f"{name}/labels"] = labels
            arrays[f"{name}/embeddings"] = emb
            arrays[f"{name}/value"] = value
            arrays[f"{name}/grad"] = grad
            manifest.append(meta)
            print(f"{name:34s} value={value!r}")
        arrays["manifest"] = np.asarray(json.dumps({
            "generator": "tools/make_tfa_lifted_fixtures.py",
            "tensorflow": tf.__version__,
            "tensorflow_addons": tfa.__version__,
            "compute_dtype": "float32",
            "seed": SEED,
            "cases": manifest,
        }, indent=1))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        np.savez_compressed(out, **arrays)
        print(f"wrote {len(manifest)} cases to {out}")
    check(out)


if __name__ == "__main__":
    main()
