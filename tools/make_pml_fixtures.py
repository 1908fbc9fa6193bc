"""Records pytorch-metric-learning (PML) 2.9 loss values and gradients as test fixtures.

PML needs PyTorch, which keras-featreg does not depend on (PyPI's torch wheel pulls several
GB of CUDA libraries), so this script runs in a throw-away environment with a CPU wheel and
writes ``tests/fixtures/pml_parity.npz``::

    python3 -m venv /tmp/pml_venv
    /tmp/pml_venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl numpy scipy tqdm
    /tmp/pml_venv/bin/pip install --no-deps "pytorch-metric-learning==2.9.*"
    /tmp/pml_venv/bin/python tools/make_pml_fixtures.py [--out tests/fixtures/pml_parity.npz]

(PML imports scipy and tqdm at import time; ``--no-deps`` keeps pip from replacing the CPU
torch with a CUDA one. scikit-learn, also declared, is not needed for the losses.)

Format (the npz + JSON-manifest layout of ``tools/make_tfa_fixtures.py``, with ``/`` as the
separator): every case ``<case>`` stores

* ``<case>/labels`` int64 (b,), ``<case>/embeddings`` float32 (b, d): the exact inputs.
  They are drawn in float32 and cast to float64; PML computes in ``torch.float64``.
* ``<case>/value`` float64 scalar, ``<case>/grad`` float64 (b, d): PML's loss and its
  gradient w.r.t. the embeddings.
* losses with class weights: ``<case>/proxies`` float32 (num_classes, embedding_size) and
  ``<case>/grad_proxies`` float64 in the same layout. PML's ``ProxyAnchorLoss.proxies`` is
  already (C, d); PML's ``ArcFaceLoss.W`` / ``CosFaceLoss.W`` is (d, C) and is stored
  TRANSPOSED (W.T), gradient too. Proxies / W are set from a seeded float32 normal draw.
* ``CrossBatchMemory`` cases: one memory object fed several consecutive batches; per step
  ``k`` = 0, 1, ...: ``<case>/step<k>/labels``, ``/embeddings``, ``/value``, ``/grad``.

The JSON manifest (key ``manifest``) lists per case: ``pml`` (class, kwargs, miner, distance),
``ours`` (class and kwargs of the keras-featreg loss that must reproduce it), ``layout``,
``relation`` ("exact": ours must match value and gradient to 1e-5; "differs": documented
difference or PML artefact, see ``note``) and ``note``. ``--check`` re-runs the NumPy
float64 reference formulas below against the stored fixtures.

Notation: x_i the embeddings, x^_i = x_i / max(||x_i||, 1e-12) (``F.normalize``),
S_ij = x^_i . x^_j (cosine), D_ij = ||x^_i - x^_j||_2 (``torch.cdist``; PML's default
``LpDistance`` NORMALIZES the embeddings first), P(i) = {j != i : y_j = y_i}, N(i) = {j : y_j
!= y_i}. "ordered pairs" = both (i, j) and (j, i). An "empty" masked logsumexp in PML
(``lmu.logsumexp``) returns 0 (not -inf): the masked entries are filled with finfo.min, and
rows with an empty mask are set to 0 afterwards. ``add_one=True`` adds a 0 logit (log(1 + ...)).
A loss whose mined/all pair lists all have length <= 1 (``GenericPairLoss.compute_loss``)
returns 0 with zero gradient -- this includes the odd case of exactly one positive and one
negative pair.

ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32)  [losses/proxy_anchor_loss.py]
    cos = S(x, p) (both normalized, (b, C)); P+ = classes present in the batch.
    pos_c = log(1 + sum_{i: y_i = c} exp(-alpha (cos_ic - margin)))      (0 if c absent)
    neg_c = log(1 + sum_{i: y_i != c} exp( alpha (cos_ic + margin)))     (0 if no such i)
    loss  = sum_c pos_c / |P+|  +  sum_c neg_c / C      (``DivisorReducer``; C = num_classes,
    ALL proxies in the second divisor, also those with no negative in the batch).
    Labels must be in [0, C). Gradients flow to embeddings and proxies.

MultiSimilarityLoss(alpha=2, beta=50, base=0.5)  [losses/multi_similarity_loss.py]
    per anchor i (all b rows):
    l_i = (1/alpha) log(1 + sum_{k in P'(i)} exp(-alpha (S_ik - base)))
        + (1/beta)  log(1 + sum_{k in N'(i)} exp( beta (S_ik - base)))
    loss = mean over ALL b anchors (``MeanReducer``; anchors with empty sets contribute 0
    to the sum but count in the divisor). Without a miner P'(i) = P(i), N'(i) = N(i).
    With a miner, P'/N' are the mined pairs (pos_mask[a1, p] = 1, neg_mask[a2, n] = 1).

MultiSimilarityMiner(epsilon=0.1)  [miners/multi_similarity_miner.py], no gradient (no_grad)
    On S (cosine, self-pairs excluded): keep positive (i, k) iff S_ik - eps < max_{n in N(i)} S_in,
    keep negative (i, n) iff S_in + eps > min_{k in P(i)} S_ik; both STRICT. Anchors without
    a negative keep no positive, anchors without a positive keep no negative. If the batch
    has no positive pair or no negative pair at all, the miner returns empty tuples and the
    loss is 0. Mined cases are PML ``loss(emb, labels, miner(emb, labels))``.

SupConLoss(temperature=0.1)  [losses/supcon_loss.py]
    Z_ij = S_ij / t; for anchor i: L_i = -(1/|P(i)|) sum_{p in P(i)} [Z_ip - log sum_{a != i} exp(Z_ia)]
    (the denominator runs over P(i) u N(i), i.e. every a != i). |P(i)| has + finfo.tiny.
    Reduction ``AvgNonZeroReducer``: mean over anchors with L_i > 0 (= anchors with a
    positive; an anchor without positive gives exactly 0 and is dropped). If the batch has
    no positive pair or no negative pair, the loss is 0 (zero gradient).
    (The per-row max subtracted for stability is detached; it includes the diagonal.)

NTXentLoss(temperature=0.07)  [losses/ntxent_loss.py]
    per ORDERED positive pair (a, p), p != a:
    l_ap = -log( e^{S_ap/t} / (e^{S_ap/t} + sum_{n in N(a)} e^{S_an/t}) + finfo.tiny )
    (other positives of a are NOT in the denominator). loss = mean over all ordered positive
    pairs (``MeanReducer``). 0 if the batch has no positive or no negative pair.

ArcFaceLoss(num_classes, embedding_size, margin=28.6, scale=64)  [losses/arcface_loss.py,
large_margin_softmax_loss.py]
    margin is in DEGREES (m = radians(28.6) = 0.49916 rad). W (d, C) columns and x normalized:
    c_ij = x^_i . W^_j. theta = acos(clamp(c_iy, -1, 1)); target logit
    cos(theta + m) if theta <= pi - m, else c_iy - m sin(m); other logits c_ij; all logits
    * scale; loss = mean_i cross-entropy(logits_i, y_i) (``MeanReducer``).
    Gradient of the target goes through acos: infinite at c = +-1 (see the degenerate case).

CosFaceLoss(num_classes, embedding_size, margin=0.35, scale=64)  [losses/cosface_loss.py]
    As ArcFace with target logit c_iy - margin; logits * scale; mean cross-entropy.

LiftedStructureLoss(neg_margin=1, pos_margin=0)  [losses/lifted_structure_loss.py]
    D = Euclidean distance of the NORMALIZED embeddings (default LpDistance). Per ORDERED
    positive pair (a, p):
    J_ap = log( sum_{n in N(a)} e^{neg_margin - D_an} + sum_{n in N(p)} e^{neg_margin - D_pn} )
           + D_ap - pos_margin
    (N(a) = N(p), so 2 |N(a)| terms); l_ap = [J_ap]_+^2 / 2; loss = mean over ordered
    positive pairs = (1 / (2 |P|)) sum_{unordered (i, j) in P} [J_ij]_+^2 (the paper's formula
    and tfa's). 0 if no positive or no negative pair. Cases ``*_nonorm`` pass
    ``distance=LpDistance(normalize_embeddings=False)``: plain Euclidean distance (tfa's
    convention).

GeneralizedLiftedStructureLoss(neg_margin=1, pos_margin=0)  [losses/lifted_structure_loss.py]
    Hermans et al. 2017, p. 4. Per anchor i (ALL b rows, D as above, normalized):
    l_i = [ LSE_{p in P(i)} (D_ip - pos_margin) + LSE_{n in N(i)} (neg_margin - D_in) ]_+
    where an empty LSE is 0 (so an anchor without positive still pays
    [LSE_n (neg_margin - D_in)]_+, and one without negative [LSE_p D_ip]_+). loss = mean
    over all b anchors (``MeanReducer``). Unlike the other pair losses here, a batch of one
    class or of singletons is NOT 0 (only the "every pair list <= 1" shortcut gives 0).

CrossBatchMemory(loss, embedding_size, memory_size)  [losses/cross_batch_memory.py]
    A ring buffer of memory_size (embedding, label) slots, write pointer q from 0. Each
    call: (1) the current batch is written, DETACHED, into slots q, q+1, ... (mod
    memory_size) FIRST; (2) the reference set is slots [0, q_new) until the buffer has
    wrapped once, then all memory_size slots; (3) all (query = current-batch row, reference =
    memory slot) pairs: positive if labels equal, negative otherwise; the positive pair of
    each query row with its OWN slot is removed (the self-pair); pairs of a row with the
    memory copies of the other rows of the current batch are kept, in both orders; (4) the
    wrapped loss runs on (embeddings, labels, those pairs, ref_emb = memory, ref_labels).
    Gradient flows only through the query side (memory is detached), so a pair of two
    current rows (i, j) gives d/dx_i via (i, j) and d/dx_j via (j, i).
    Wrapped ContrastiveLoss(pos_margin=0, neg_margin=1) (default LpDistance: normalized):
      loss = mean_{pos pairs with D>0} D  +  mean_{neg pairs with 1-D>0} (1 - D)
      (``AvgNonZeroReducer`` for each part separately, then summed; an empty part gives 0).
    Wrapped TripletMarginLoss(margin=0.2): the pairs are turned into every triplet
      (a, p, n) with (a, p) a kept positive and (a, n) a negative of the same query a;
      loss = mean over triplets with D_ap - D_an + 0.2 > 0 of that value (AvgNonZero).
    Memory size must be >= batch size. Cases ``*_nonorm`` use
    ``distance=LpDistance(normalize_embeddings=False)``.

Existing keras-featreg losses (lower priority): ``ContrastiveLoss(margin=1, power=1)`` equals
PML ``ContrastiveLoss(pos_margin=0, neg_margin=1, reducer=SumReducer(),
distance=LpDistance(normalize_embeddings=False))`` divided by b (b - 1); the stored value
already includes that division. ``TripletLoss(mining="all", margin=0.2)`` equals PML
``TripletMarginLoss(margin=0.2, distance=LpDistance(normalize_embeddings=False))``
(all triplets, mean over the triplets with a positive loss).

"ours" for losses whose PML form normalizes the embeddings: where our loss does not
normalize itself, the manifest says ``"ours_input": "l2_normalize"``: apply it to
``x / ||x||`` computed INSIDE the differentiated graph (PML's gradient includes the
normalization Jacobian (I - x^ x^T) / ||x||).
"""

import argparse
import json
import os

import numpy as np
import torch
import pytorch_metric_learning
from pytorch_metric_learning import losses, miners, reducers
from pytorch_metric_learning.distances import LpDistance

SEED = 20261214
F64 = torch.float64
torch.set_default_dtype(F64)


# ---------------------------------------------------------------- inputs
def _f32(x):
    return np.asarray(x, dtype=np.float32)


def _unit(x):
    return _f32(x / np.linalg.norm(x, axis=1, keepdims=True))


def _pxl(rng, p, l, pool=100):
    labels = np.repeat(rng.choice(pool, size=p, replace=False), l)
    return rng.permutation(labels).astype(np.int64)


def _emb(rng, b, d, kind):
    raw = rng.normal(size=(b, d))
    if kind == "unit":
        return _unit(raw)
    return _f32(kind * raw)  # kind = scale of an un-normalized draw


# ---------------------------------------------------------------- running PML
def _value_and_grad(fn, emb, params=()):
    x = torch.tensor(np.asarray(emb, dtype=np.float64), dtype=F64, requires_grad=True)
    for prm in params:
        prm.grad = None
    value = fn(x)
    value.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    pgrads = [
        (prm.grad if prm.grad is not None else torch.zeros_like(prm)).detach().numpy().copy()
        for prm in params
    ]
    return float(value.detach()), grad.numpy().copy(), pgrads


def _lbl(labels):
    return torch.tensor(np.asarray(labels, dtype=np.int64))


def _kw_str(kwargs):
    return {k: (repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
            for k, v in kwargs.items()}


class Cases:
    def __init__(self):
        self.arrays, self.manifest = {}, []

    def add(self, name, meta, arrays):
        assert all(m["name"] != name for m in self.manifest), name
        meta = {"name": name, **meta}
        meta.setdefault("note", "")
        meta.setdefault("relation", "exact")
        self.manifest.append(meta)
        for k, v in arrays.items():
            self.arrays[f"{name}/{k}"] = v
        value = arrays.get("value", arrays.get("step0/value"))
        shown = "" if value is None else f"value={float(value):.10g}"
        print(f"{name:46s} {meta['pml']['class']:32s} {shown}", flush=True)


def save_fixtures(out, cases, generator, fmt, seed, compute_dtype="float64"):
    """Writes `cases` (their arrays and a JSON manifest under the key ``manifest``, with the
    generator, the torch and PML versions, the seed and the format) to the npz `out`."""
    arrays = dict(cases.arrays)
    arrays["manifest"] = np.asarray(json.dumps({
        "generator": generator,
        "torch": torch.__version__,
        "pytorch_metric_learning": pytorch_metric_learning.__version__,
        "compute_dtype": compute_dtype,
        "seed": seed,
        "format": fmt,
        "cases": cases.manifest,
    }, indent=1))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {len(cases.manifest)} cases to {out}")


def _pml_meta(cls_name, kwargs, miner=None, distance=None):
    meta = {"class": f"pytorch_metric_learning.losses.{cls_name}", "kwargs": _kw_str(kwargs)}
    if miner is not None:
        meta["miner"] = miner
    if distance is not None:
        meta["distance"] = distance
    return meta


def _plain_case(cases, name, loss, pml_meta, ours, labels, emb, layout, note="",
                relation=None, miner=None, extra=None):
    def fn(x):
        lab = _lbl(labels)
        if miner is not None:
            return loss(x, lab, miner(x, lab))
        return loss(x, lab)

    value, grad, _ = _value_and_grad(fn, emb)
    if relation is None:
        relation = "exact" if np.isfinite(value) and np.all(np.isfinite(grad)) else "differs"
    meta = {"pml": pml_meta, "ours": ours, "layout": layout, "relation": relation,
            "note": note, **(extra or {})}
    cases.add(name, meta, {"labels": np.asarray(labels, np.int64), "embeddings": _f32(emb),
                           "value": np.float64(value), "grad": grad})
    return value, grad


# ---------------------------------------------------------------- losses
def proxy_anchor_cases(cases, rng):
    specs = [
        # name, C, labels, emb, margin, alpha, layout
        ("proxy_anchor_36x4_d32_unnormalized", 50, _pxl(rng, 36, 4, 50), None, 32, 2.0,
         0.1, 32, "shuffled 36x4, un-normalized (scale 2)"),
        ("proxy_anchor_8x3_d8_unit", 12, _pxl(rng, 8, 3, 12), None, 8, "unit", 0.1, 32,
         "shuffled 8x3 of 12 classes, unit-normalized"),
        ("proxy_anchor_6x4_d8_m0.2_a16", 10, _pxl(rng, 6, 4, 10), None, 8, 0.5, 0.2, 16,
         "shuffled 6x4, un-normalized (scale 0.5), margin 0.2, alpha 16"),
        ("proxy_anchor_random_labels_b20_d8", 7, rng.integers(0, 7, size=20).astype(np.int64),
         None, 8, 1.0, 0.1, 32, "20 random labels of 7 classes (some classes absent / singletons)"),
        ("proxy_anchor_identical_rows_b6", 5, np.array([0, 0, 1, 1, 3, 3]), "same", 8, 1.0,
         0.1, 32, "degenerate: identical rows"),
        ("proxy_anchor_one_class_b5", 6, np.full(5, 3), None, 8, 1.0, 0.1, 32,
         "degenerate: one class only"),
        ("proxy_anchor_every_class_once_b8_C8", 8, rng.permutation(8), None, 8, 1.0, 0.1, 32,
         "degenerate: every class once, all C classes present"),
        ("proxy_anchor_every_class_once_b6_C12", 12, rng.choice(12, 6, replace=False), None,
         32, "unit", 0.1, 32, "degenerate: every class once, half the classes absent"),
        ("proxy_anchor_b2", 4, np.array([1, 1]), None, 8, 1.0, 0.1, 32, "degenerate: b = 2"),
    ]
    for name, C, labels, emb, d, kind, margin, alpha, layout in specs:
        labels = np.asarray(labels, np.int64)
        b = len(labels)
        if isinstance(emb, str):
            emb = np.repeat(_emb(rng, 1, d, kind), b, axis=0)
        else:
            emb = _emb(rng, b, d, kind)
        proxies = _f32(rng.normal(size=(C, d)))
        loss = losses.ProxyAnchorLoss(num_classes=C, embedding_size=d, margin=margin, alpha=alpha)
        loss.proxies.data = torch.tensor(proxies.astype(np.float64))
        value, grad, (gp,) = _value_and_grad(lambda x: loss(x, _lbl(labels)), emb, [loss.proxies])
        kwargs = {"num_classes": C, "embedding_size": d, "margin": margin, "alpha": alpha}
        cases.add(name, {
            "pml": _pml_meta("ProxyAnchorLoss", kwargs), "ours": {"class": "ProxyAnchorLoss",
                                                                   "kwargs": kwargs},
            "layout": layout, "proxies_layout": "(num_classes, embedding_size), as PML",
            "relation": "exact",
            "note": "Proxies set from a seeded N(0, 1) float32 draw. loss = sum_c pos_c/|P+| "
                    "+ sum_c neg_c/num_classes.",
        }, {"labels": labels, "embeddings": emb, "proxies": proxies, "value": np.float64(value),
            "grad": grad, "grad_proxies": gp})


def _std_layouts(rng):
    """Layouts shared by the pair losses: (name suffix, labels, embeddings, layout)."""
    out = [
        ("36x4_d32_unnormalized", _pxl(rng, 36, 4), None, 32, 3.0, "shuffled 36x4, un-normalized (scale 3)"),
        ("36x4_d32_unit", _pxl(rng, 36, 4), None, 32, "unit", "shuffled 36x4, unit-normalized"),
        ("8x3_d8_unit", _pxl(rng, 8, 3), None, 8, "unit", "shuffled 8x3, unit-normalized"),
        ("8x3_d8_unnormalized", _pxl(rng, 8, 3), None, 8, 0.7, "shuffled 8x3, un-normalized (scale 0.7)"),
        ("random_labels_b16_d8", rng.integers(0, 5, size=16), None, 8, 1.0,
         "16 random labels of 5 classes (singletons possible), un-normalized"),
        ("identical_rows_b6", np.array([0, 0, 1, 1, 2, 2]), "same", 8, 1.0, "degenerate: identical rows"),
        ("one_class_b5", np.full(5, 4), None, 8, 1.0, "degenerate: one class only"),
        ("every_class_once_b6", rng.choice(50, 6, replace=False), None, 8, 1.0,
         "degenerate: every class once"),
        ("b2_same_class", np.array([3, 3]), None, 8, 1.0, "degenerate: b = 2, one positive pair"),
        ("b2_two_classes", np.array([3, 5]), None, 8, 1.0, "degenerate: b = 2, one negative pair"),
    ]
    res = []
    for suffix, labels, emb, d, kind, layout in out:
        labels = np.asarray(labels, np.int64)
        b = len(labels)
        emb = np.repeat(_emb(rng, 1, d, kind), b, axis=0) if isinstance(emb, str) else _emb(rng, b, d, kind)
        res.append((suffix, labels, emb, layout))
    return res


def _degenerate_note(value, grad):
    if not np.isfinite(value) or not np.all(np.isfinite(grad)):
        return "PML gives a non-finite value or gradient here; recorded as is."
    if value == 0.0 and not np.any(grad):
        return "PML returns 0 with zero gradient (no valid pair / anchor)."
    return ""


def multi_similarity_cases(cases, rng):
    kw = {"alpha": 2, "beta": 50, "base": 0.5}
    for suffix, labels, emb, layout in _std_layouts(rng):
        loss = losses.MultiSimilarityLoss(**kw)
        v, g = _plain_case(cases, f"multi_similarity_{suffix}", loss,
                           _pml_meta("MultiSimilarityLoss", kw),
                           {"class": "MultiSimilarityLoss", "kwargs": kw}, labels, emb, layout)
        cases.manifest[-1]["note"] = _degenerate_note(v, g) or "mean over all b anchors"
    # Same layouts again, new draws, with the miner.
    for suffix, labels, emb, layout in _std_layouts(rng):
        loss = losses.MultiSimilarityLoss(**kw)
        miner = miners.MultiSimilarityMiner(epsilon=0.1)
        v, g = _plain_case(cases, f"multi_similarity_mined_{suffix}", loss,
                           _pml_meta("MultiSimilarityLoss", kw,
                                     miner="pytorch_metric_learning.miners.MultiSimilarityMiner(epsilon=0.1)"),
                           {"class": "MultiSimilarityLoss", "kwargs": kw,
                            "miner": {"class": "MultiSimilarityMiner", "kwargs": {"epsilon": 0.1}}},
                           labels, emb, layout, miner=miner)
        with torch.no_grad():
            x = torch.tensor(emb.astype(np.float64))
            a1, p, a2, n = miner(x, _lbl(labels))
        cases.manifest[-1]["mined_pairs"] = {"pos": int(len(a1)), "neg": int(len(a2))}
        cases.manifest[-1]["note"] = (_degenerate_note(v, g) or
                                      "mean over all b anchors; unmined pairs excluded")


def supcon_cases(cases, rng):
    for t in (0.1, 0.5):
        for suffix, labels, emb, layout in _std_layouts(rng):
            if t == 0.5 and not suffix.startswith(("8x3", "random")):
                continue
            kw = {"temperature": t}
            loss = losses.SupConLoss(**kw)
            v, g = _plain_case(cases, f"supcon_t{t}_{suffix}", loss, _pml_meta("SupConLoss", kw),
                               {"class": "SupConLoss", "kwargs": kw}, labels, emb, layout)
            cases.manifest[-1]["note"] = (_degenerate_note(v, g) or
                                          "mean over anchors with a positive (AvgNonZeroReducer)")


def ntxent_cases(cases, rng):
    kw = {"temperature": 0.07}
    layouts = _std_layouts(rng)
    for n, d in ((8, 8), (16, 32)):
        labels = np.tile(rng.choice(1000, n, replace=False), 2).astype(np.int64)
        layouts.append((f"two_view_b{2 * n}_d{d}", labels, _emb(rng, 2 * n, d, 1.0),
                        f"two views: rows i and i+{n} share a label, every label twice, un-normalized"))
    for suffix, labels, emb, layout in layouts:
        loss = losses.NTXentLoss(**kw)
        v, g = _plain_case(cases, f"ntxent_{suffix}", loss, _pml_meta("NTXentLoss", kw),
                           {"class": "NTXentLoss", "kwargs": kw}, labels, emb, layout)
        cases.manifest[-1]["note"] = (_degenerate_note(v, g) or
                                      "mean over ordered positive pairs; other positives not in the denominator")


def _margin_softmax_cases(cases, rng, cls_name, default_margin):
    cls = getattr(losses, cls_name)
    lower = cls_name.replace("Loss", "").lower()
    specs = [
        # suffix, C, labels, d, kind, scale, layout
        ("36x4_d32_unnormalized", 50, _pxl(rng, 36, 4, 50), 32, 3.0, 64, "shuffled 36x4 of 50 classes, un-normalized"),
        ("36x4_d32_unnormalized_s16", 50, _pxl(rng, 36, 4, 50), 32, 3.0, 16, "shuffled 36x4, scale 16"),
        ("8x3_d8_unit", 10, _pxl(rng, 8, 3, 10), 8, "unit", 64, "shuffled 8x3 of 10 classes, unit"),
        ("8x3_d8_unit_s16", 10, _pxl(rng, 8, 3, 10), 8, "unit", 16, "shuffled 8x3 of 10 classes, unit, scale 16"),
        ("random_labels_b16_d8_s16", 6, rng.integers(0, 6, 16), 8, 0.5, 16, "16 random labels of 6 classes, scale 16"),
        ("identical_rows_b6_s16", 4, np.array([0, 0, 1, 1, 2, 2]), 8, "same", 16, "degenerate: identical rows"),
        ("one_class_b5_s16", 5, np.full(5, 2), 8, 1.0, 16, "degenerate: one class only"),
        ("every_class_once_b6_s16", 6, rng.permutation(6), 8, 1.0, 16, "degenerate: every class once"),
        ("b2_s16", 3, np.array([0, 2]), 8, 1.0, 16, "degenerate: b = 2"),
        ("near_opposite_b8_s16", 8, rng.permutation(8), 8, "opposite", 16,
         "rows close to -W_y (target angle > pi - m: ArcFace's fallback branch)"),
        ("equal_to_class_weight_b6_s16", 6, rng.permutation(6), 8, "weight", 16,
         "degenerate: each row equals its class's weight column (cos = 1)"),
    ]
    for suffix, C, labels, d, kind, scale, layout in specs:
        labels = np.asarray(labels, np.int64)
        b = len(labels)
        proxies = _f32(rng.normal(size=(C, d)))
        if kind == "same":
            emb = np.repeat(_emb(rng, 1, d, 1.0), b, axis=0)
        elif kind == "opposite":
            emb = _f32(-proxies[labels] + 0.2 * rng.normal(size=(b, d)))
        elif kind == "weight":
            emb = proxies[labels].copy()
        else:
            emb = _emb(rng, b, d, kind)
        kw = {"num_classes": C, "embedding_size": d, "margin": default_margin, "scale": scale}
        loss = cls(**kw)
        loss.W.data = torch.tensor(proxies.T.astype(np.float64))
        value, grad, (gw,) = _value_and_grad(lambda x: loss(x, _lbl(labels)), emb, [loss.W])
        finite = np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(gw))
        note = "mean cross-entropy over the b rows"
        if cls_name == "ArcFaceLoss":
            note += "; margin in degrees (radians(28.6) = 0.49916 rad)"
            if kind == "opposite":
                with torch.no_grad():
                    xn = torch.nn.functional.normalize(torch.tensor(emb.astype(np.float64)))
                    wn = torch.nn.functional.normalize(torch.tensor(proxies.astype(np.float64)))
                    ct = (xn * wn[torch.tensor(labels)]).sum(1)
                    n_fb = int((torch.acos(ct) > np.pi - np.radians(default_margin)).sum())
                assert n_fb > 0, n_fb
                note += f"; {n_fb} of {b} rows take the fallback c - m sin(m)"
        if not finite:
            note = ("PML's gradient is non-finite (d acos / dc is infinite at c = 1); "
                    "recorded as is. " + note)
        elif kind == "weight":
            note = ("cos_iy is within rounding of 1; PML's acos gradient there is "
                    "ill-conditioned: compare the value only. " + note) if cls_name == "ArcFaceLoss" else note
        cases.add(f"{lower}_{suffix}", {
            "pml": _pml_meta(cls_name, kw), "ours": {"class": cls_name, "kwargs": kw},
            "layout": layout,
            "proxies_layout": "(num_classes, embedding_size) = PML's W (d, C) TRANSPOSED",
            "relation": "exact" if finite and not (kind == "weight" and cls_name == "ArcFaceLoss") else "differs",
            "note": note,
        }, {"labels": labels, "embeddings": emb, "proxies": proxies, "value": np.float64(value),
            "grad": grad, "grad_proxies": gw.T.copy()})


def lifted_cases(cases, rng):
    kw = {"neg_margin": 1, "pos_margin": 0}
    for cls_name, ours_cls in (("LiftedStructureLoss", "LiftedStructureLoss"),
                               ("GeneralizedLiftedStructureLoss", "GeneralizedLiftedStructureLoss")):
        lower = "lifted" if cls_name == "LiftedStructureLoss" else "generalized_lifted"
        for norm in (True, False):
            for suffix, labels, emb, layout in _std_layouts(rng):
                if not norm:
                    if suffix == "36x4_d32_unit":
                        continue
                    if "unit" not in suffix:
                        emb = _f32(emb * 0.3)  # distances comparable to the margin
                        layout += ", times 0.3"
                dist = None if norm else LpDistance(normalize_embeddings=False)
                loss = getattr(losses, cls_name)(**kw, **({} if norm else {"distance": dist}))
                pml = _pml_meta(cls_name, kw, distance=(
                    "LpDistance(p=2) default: normalizes embeddings" if norm
                    else "LpDistance(normalize_embeddings=False): plain Euclidean"))
                ours = {"class": ours_cls, "kwargs": kw}
                if norm:
                    ours["ours_input"] = "l2_normalize"
                v, g = _plain_case(cases, f"{lower}_{'' if norm else 'nonorm_'}{suffix}", loss,
                                   pml, ours, labels, emb, layout)
                base = ("(1/(2|P|)) sum over unordered positive pairs of [J]_+^2"
                        if lower == "lifted" else
                        "mean over all b anchors of [LSE_pos D + LSE_neg (1 - D)]_+, empty LSE = 0")
                cases.manifest[-1]["note"] = _degenerate_note(v, g) or base
                if "identical_rows" in suffix:
                    cases.manifest[-1]["note"] += (
                        " Identical rows: D = 0, torch.cdist's gradient at 0 is 0, so PML's "
                        "gradient is 0 (a safe-sqrt implementation must give 0 too).")


def _xbm_case(cases, name, inner, inner_meta, ours_inner, memory_size, batches, d, note):
    xbm = losses.CrossBatchMemory(inner, embedding_size=d, memory_size=memory_size)
    arrays, steps = {}, []
    for k, (labels, emb) in enumerate(batches):
        value, grad, _ = _value_and_grad(lambda x: xbm(x, _lbl(labels)), emb)
        arrays.update({f"step{k}/labels": np.asarray(labels, np.int64), f"step{k}/embeddings": emb,
                       f"step{k}/value": np.float64(value), f"step{k}/grad": grad})
        steps.append({"b": len(labels), "queue_idx_after": int(xbm.queue_idx),
                      "has_been_filled": bool(xbm.has_been_filled)})
    cases.add(name, {
        "pml": {"class": "pytorch_metric_learning.losses.CrossBatchMemory",
                "kwargs": {"embedding_size": d, "memory_size": memory_size}, "loss": inner_meta},
        "ours": {"class": "CrossBatchMemory",
                 "kwargs": {"loss": ours_inner, "embedding_size": d, "memory_size": memory_size}},
        "layout": f"{len(batches)} consecutive batches of sizes {[len(b[0]) for b in batches]} "
                  f"through one memory of {memory_size} slots (wraps around)",
        "steps": steps, "relation": "exact", "note": note,
    }, arrays)


def xbm_cases(cases, rng):
    def batches(sizes, d, kind, classes):
        pool = rng.choice(100, classes, replace=False)
        out = []
        for b in sizes:
            labels = rng.choice(pool, b).astype(np.int64)
            out.append((labels, _emb(rng, b, d, kind)))
        return out

    ckw = {"pos_margin": 0, "neg_margin": 1}
    tkw = {"margin": 0.2}
    common = ("Batch written into memory (detached) before the loss; reference = filled "
              "memory slots; self-pairs (row, own slot) removed; gradient w.r.t. the "
              "current batch only.")
    _xbm_case(cases, "xbm_contrastive_d8", losses.ContrastiveLoss(**ckw),
              _pml_meta("ContrastiveLoss", ckw, distance="LpDistance default: normalizes"),
              {"class": "ContrastiveLoss", "kwargs": {"pos_margin": 0, "neg_margin": 1},
               "ours_input": "l2_normalize"},
              20, batches([8, 8, 8, 8], 8, 1.0, 5), 8,
              common + " Contrastive: AvgNonZero(pos D) + AvgNonZero(neg [1 - D]_+), normalized.")
    _xbm_case(cases, "xbm_triplet_d32", losses.TripletMarginLoss(**tkw),
              _pml_meta("TripletMarginLoss", tkw, distance="LpDistance default: normalizes"),
              {"class": "TripletLoss", "kwargs": {"margin": 0.2, "mining": "all"},
               "ours_input": "l2_normalize"},
              16, batches([6, 6, 6, 6], 32, 1.0, 4), 32,
              common + " Triplet: all (a, p, n), a in batch, p, n in memory; mean over "
                       "triplets with positive loss.")
    _xbm_case(cases, "xbm_contrastive_nonorm_d8", losses.ContrastiveLoss(
        **ckw, distance=LpDistance(normalize_embeddings=False)),
              _pml_meta("ContrastiveLoss", ckw, distance="LpDistance(normalize_embeddings=False)"),
              {"class": "ContrastiveLoss", "kwargs": {"pos_margin": 0, "neg_margin": 1}},
              12, batches([5, 7, 6], 8, 0.3, 4), 8,
              common + " Plain Euclidean distance; batches of unequal size.")
    _xbm_case(cases, "xbm_triplet_nonorm_d8", losses.TripletMarginLoss(
        **tkw, distance=LpDistance(normalize_embeddings=False)),
              _pml_meta("TripletMarginLoss", tkw, distance="LpDistance(normalize_embeddings=False)"),
              {"class": "TripletLoss", "kwargs": {"margin": 0.2, "mining": "all"}},
              10, batches([4, 4, 4, 4], 8, 0.15, 3), 8,
              common + " Plain Euclidean distance.")


def existing_loss_cases(cases, rng):
    nonorm = "LpDistance(normalize_embeddings=False)"
    for suffix, p, l, d, scale in (("16x4_d8", 16, 4, 8, 0.3), ("6x3_d32_unit", 6, 3, 32, "unit")):
        labels = _pxl(rng, p, l)
        emb = _emb(rng, p * l, d, scale)
        b = p * l
        loss = losses.ContrastiveLoss(pos_margin=0, neg_margin=1, reducer=reducers.SumReducer(),
                                      distance=LpDistance(normalize_embeddings=False))
        _plain_case(cases, f"existing_contrastive_{suffix}", lambda x, y: loss(x, y) / (b * (b - 1)),
                    _pml_meta("ContrastiveLoss", {"pos_margin": 0, "neg_margin": 1,
                                                  "reducer": "SumReducer()"}, distance=nonorm),
                    {"class": "ContrastiveLoss",
                     "kwargs": {"margin": 1.0, "distance": "euclidean", "power": 1}},
                    labels, emb, f"shuffled {p}x{l}",
                    note="stored value = PML SumReducer value / (b (b - 1))")
        loss_t = losses.TripletMarginLoss(margin=0.2, distance=LpDistance(normalize_embeddings=False))
        _plain_case(cases, f"existing_triplet_all_{suffix}", loss_t,
                    _pml_meta("TripletMarginLoss", {"margin": 0.2}, distance=nonorm),
                    {"class": "TripletLoss",
                     "kwargs": {"margin": 0.2, "mining": "all", "distance": "euclidean"}},
                    labels, emb, f"shuffled {p}x{l}",
                    note="all triplets, mean over triplets with a positive loss")


# ---------------------------------------------------------------- NumPy references
def _np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _lse(v):
    if len(v) == 0:
        return 0.0
    m = np.max(v)
    return m + np.log(np.sum(np.exp(v - m)))


def _ref_supcon(y, x, t):
    s = _np_normalize(x) @ _np_normalize(x).T / t
    b = len(y)
    if not any(y[i] == y[j] for i in range(b) for j in range(b) if i != j) or len(set(y)) < 2:
        return 0.0
    out = []
    for i in range(b):
        pos = [j for j in range(b) if j != i and y[j] == y[i]]
        if not pos:
            continue
        den = _lse(np.array([s[i, a] for a in range(b) if a != i]))
        out.append(-np.mean([s[i, p] - den for p in pos]))
    return float(np.mean(out))


def _ref_ntxent(y, x, t):
    s = _np_normalize(x) @ _np_normalize(x).T / t
    b = len(y)
    terms = []
    for a in range(b):
        negs = [s[a, n] for n in range(b) if y[n] != y[a]]
        for p in range(b):
            if p != a and y[p] == y[a]:
                terms.append(-(s[a, p] - _lse(np.array([s[a, p]] + negs))))
    if not terms or len(set(y)) < 2:
        return 0.0
    return float(np.mean(terms))


def _ref_ms(y, x, alpha=2, beta=50, base=0.5):
    s = _np_normalize(x) @ _np_normalize(x).T
    b = len(y)
    out = []
    for i in range(b):
        pos = np.array([s[i, k] for k in range(b) if k != i and y[k] == y[i]])
        neg = np.array([s[i, k] for k in range(b) if y[k] != y[i]])
        out.append(np.log1p(np.sum(np.exp(-alpha * (pos - base)))) / alpha
                   + np.log1p(np.sum(np.exp(beta * (neg - base)))) / beta)
    return float(np.mean(out))


def _ref_ms_mined(y, x, eps=0.1, alpha=2, beta=50, base=0.5):
    s = _np_normalize(x) @ _np_normalize(x).T
    b = len(y)
    pos = [[k for k in range(b) if k != i and y[k] == y[i]] for i in range(b)]
    neg = [[k for k in range(b) if y[k] != y[i]] for i in range(b)]
    if not any(pos) or not any(neg):
        return 0.0
    kept_p, kept_n = [], []
    for i in range(b):
        max_n = max((s[i, k] for k in neg[i]), default=-np.inf)
        min_p = min((s[i, k] for k in pos[i]), default=np.inf)
        kept_p.append(np.array([s[i, k] for k in pos[i] if s[i, k] - eps < max_n]))
        kept_n.append(np.array([s[i, k] for k in neg[i] if s[i, k] + eps > min_p]))
    if sum(map(len, kept_p)) <= 1 and sum(map(len, kept_n)) <= 1:
        return 0.0
    return float(np.mean([
        np.log1p(np.sum(np.exp(-alpha * (kp - base)))) / alpha
        + np.log1p(np.sum(np.exp(beta * (kn - base)))) / beta
        for kp, kn in zip(kept_p, kept_n)]))


def _ref_xbm(steps, memory_size, inner, normalize, margin=0.2):
    """CrossBatchMemory values (ContrastiveLoss(0, 1) or TripletMarginLoss(margin))."""
    mem_x, mem_y, q, filled, out = [None] * memory_size, [None] * memory_size, 0, False, []
    for y, x in steps:
        slots = [(q + i) % memory_size for i in range(len(y))]
        for i, sl in enumerate(slots):
            mem_x[sl], mem_y[sl] = x[i], y[i]
        q_new = (q + len(y)) % memory_size
        filled = filled or q_new <= q
        q = q_new
        ref = list(range(memory_size)) if filled else list(range(q))
        z = _np_normalize(x) if normalize else x
        mz = np.array([mem_x[r] for r in ref])
        mz = _np_normalize(mz) if normalize else mz
        D = np.linalg.norm(z[:, None] - mz[None], axis=-1)
        my = np.array([mem_y[r] for r in ref])
        pos = [(i, j) for i in range(len(y)) for j in range(len(ref))
               if my[j] == y[i] and ref[j] != slots[i]]
        neg = [(i, j) for i in range(len(y)) for j in range(len(ref)) if my[j] != y[i]]
        if inner == "contrastive":
            lp = [D[i, j] for i, j in pos if D[i, j] > 0]
            ln = [1 - D[i, j] for i, j in neg if 1 - D[i, j] > 0]
            out.append((np.mean(lp) if lp else 0.0) + (np.mean(ln) if ln else 0.0))
        else:
            t = [D[i, j] - D[i, k] + margin for i, j in pos for i2, k in neg if i2 == i]
            t = [v for v in t if v > 0]
            out.append(np.mean(t) if t else 0.0)
    return out


def _ref_proxy_anchor(y, x, proxies, margin, alpha):
    cos = _np_normalize(x) @ _np_normalize(proxies).T
    C = len(proxies)
    present = sorted(set(y.tolist()))
    pos = sum(np.log1p(np.sum(np.exp(-alpha * (cos[y == c, c] - margin)))) for c in present)
    neg = sum(np.log1p(np.sum(np.exp(alpha * (cos[y != c, c] + margin)))) for c in range(C))
    return float(pos / len(present) + neg / C)


def _dist(x, normalize):
    z = _np_normalize(x) if normalize else x
    return np.sqrt(np.maximum(np.sum((z[:, None] - z[None]) ** 2, -1), 0.0))


def _ref_lifted(y, x, normalize, m=1.0):
    D = _dist(x, normalize)
    b = len(y)
    terms = []
    for i in range(b):
        for j in range(i + 1, b):
            if y[i] == y[j]:
                ni, nj = np.flatnonzero(y != y[i]), np.flatnonzero(y != y[j])
                J = _lse(np.concatenate([m - D[i, ni], m - D[j, nj]])) + D[i, j]
                terms.append(max(J, 0.0) ** 2)
    if not terms or len(set(y)) < 2:
        return 0.0
    return float(np.sum(terms) / (2 * len(terms)))


def _ref_gen_lifted(y, x, normalize, m=1.0):
    D = _dist(x, normalize)
    b = len(y)
    n_pos = sum(y[i] == y[k] for i in range(b) for k in range(b) if i != k)
    if n_pos <= 1 and b * b - b - n_pos <= 1:  # GenericPairLoss's "all lists <= 1" shortcut
        return 0.0
    out = []
    for i in range(b):
        pos = np.array([D[i, k] for k in range(b) if k != i and y[k] == y[i]])
        neg = np.array([m - D[i, k] for k in range(b) if y[k] != y[i]])
        out.append(max(_lse(pos) + _lse(neg), 0.0))
    return float(np.mean(out))


def _ref_margin_softmax(y, x, proxies, kind, margin, scale):
    c = _np_normalize(x) @ _np_normalize(proxies).T
    logits = c.copy()
    rows = np.arange(len(y))
    ct = np.clip(c[rows, y], -1, 1)
    if kind == "cosface":
        logits[rows, y] = ct - margin
    else:
        m = np.radians(margin)
        th = np.arccos(ct)
        logits[rows, y] = np.where(th <= np.pi - m, np.cos(th + m), ct - m * np.sin(m))
    logits *= scale
    lse = np.array([_lse(r) for r in logits])
    return float(np.mean(lse - logits[rows, y]))


def check(path):
    """Recomputes the closed-form losses in NumPy float64 from the stored inputs."""
    data = np.load(path)
    manifest = json.loads(str(data["manifest"]))
    n = 0
    for meta in manifest["cases"]:
        name = meta["name"]
        if name.startswith("xbm_"):
            k = len(meta["steps"])
            steps = [(data[f"{name}/step{i}/labels"], data[f"{name}/step{i}/embeddings"]
                      .astype(np.float64)) for i in range(k)]
            refs = _ref_xbm(steps, meta["pml"]["kwargs"]["memory_size"],
                            "contrastive" if "contrastive" in name else "triplet",
                            "nonorm" not in name)
            for i, ref in enumerate(refs):
                v = float(data[f"{name}/step{i}/value"])
                assert abs(ref - v) <= 1e-9 * max(1.0, abs(v)), (name, i, ref, v)
                n += 1
            continue
        y = data[f"{name}/labels"]
        x = data[f"{name}/embeddings"].astype(np.float64)
        v = float(data[f"{name}/value"])
        kw = meta["pml"]["kwargs"]
        cls = meta["pml"]["class"].rsplit(".", 1)[1]
        normalize = "normalize_embeddings=False" not in meta["pml"].get("distance", "")
        if name.startswith("existing_"):
            continue
        if "miner" in meta["pml"]:
            ref = _ref_ms_mined(y, x)
        elif cls == "SupConLoss":
            ref = _ref_supcon(y, x, kw["temperature"])
        elif cls == "NTXentLoss":
            ref = _ref_ntxent(y, x, kw["temperature"])
        elif cls == "MultiSimilarityLoss":
            ref = _ref_ms(y, x)
        elif cls == "ProxyAnchorLoss":
            ref = _ref_proxy_anchor(y, x, data[f"{name}/proxies"].astype(np.float64),
                                    kw["margin"], kw["alpha"])
        elif cls == "LiftedStructureLoss":
            ref = _ref_lifted(y, x, normalize)
        elif cls == "GeneralizedLiftedStructureLoss":
            ref = _ref_gen_lifted(y, x, normalize)
        elif cls in ("ArcFaceLoss", "CosFaceLoss"):
            ref = _ref_margin_softmax(y, x, data[f"{name}/proxies"].astype(np.float64),
                                      "cosface" if cls == "CosFaceLoss" else "arcface",
                                      kw["margin"], kw["scale"])
        else:
            raise AssertionError(cls)
        assert abs(ref - v) <= 1e-9 * max(1.0, abs(v)), (name, ref, v)
        n += 1
    print(f"NumPy float64 reference agrees with {n} stored values (rel. 1e-9)")


def build_cases():
    rng = np.random.default_rng(SEED)
    cases = Cases()
    proxy_anchor_cases(cases, rng)
    multi_similarity_cases(cases, rng)
    supcon_cases(cases, rng)
    ntxent_cases(cases, rng)
    _margin_softmax_cases(cases, rng, "ArcFaceLoss", 28.6)
    _margin_softmax_cases(cases, rng, "CosFaceLoss", 0.35)
    lifted_cases(cases, rng)
    xbm_cases(cases, rng)
    existing_loss_cases(cases, rng)
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--out", default=os.path.join(here, os.pardir, "tests", "fixtures", "pml_parity.npz"))
    parser.add_argument("--check", action="store_true",
                        help="only re-check the stored fixtures against the NumPy formulas")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    if not args.check:
        save_fixtures(
            out, build_cases(), "tools/make_pml_fixtures.py",
            "<case>/labels int64, <case>/embeddings float32 (exact inputs), "
            "<case>/value and <case>/grad float64; <case>/proxies float32 and "
            "<case>/grad_proxies float64 as (num_classes, embedding_size) (ArcFace/"
            "CosFace W transposed); CrossBatchMemory: <case>/step<k>/...", SEED)
    check(out)


if __name__ == "__main__":
    main()
