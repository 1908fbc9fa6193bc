"""Records pytorch-metric-learning (PML) 2.9 Circle loss values and gradients as test fixtures.

Runs in the throw-away environment of ``tools/make_pml_fixtures.py`` (PML needs PyTorch)
and writes ``tests/fixtures/pml_circle.npz``::

    python3 -m venv /tmp/pml_venv
    /tmp/pml_venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl numpy scipy tqdm
    /tmp/pml_venv/bin/pip install --no-deps "pytorch-metric-learning==2.9.*"
    /tmp/pml_venv/bin/python tools/make_pml_circle_fixtures.py [--out tests/fixtures/pml_circle.npz]

Format: the npz + JSON-manifest layout of ``tools/make_pml_fixtures.py`` (``/`` as the
separator). Every case ``<case>`` stores ``<case>/labels`` int64 (b,), ``<case>/embeddings``
float32 (b, d) (the exact inputs, drawn in float32; PML computes on them cast to
``torch.float64``), ``<case>/value`` float64 scalar and ``<case>/grad`` float64 (b, d), PML's
loss and its gradient w.r.t. the embeddings. The JSON manifest (key ``manifest``) lists per
case ``pml`` (class, kwargs, miner, reducer), ``ours`` (class, kwargs, miner of the
keras-featreg loss that must reproduce it), ``layout``, ``relation`` ("exact") and ``note``.
``--check`` re-runs the NumPy float64 reference below against the stored values.

CircleLoss(m=0.4, gamma=80)  [losses/circle_loss.py; GenericPairLoss, mat_based_loss]
    S = cosine similarity (``CosineSimilarity``, rows normalized with F.normalize), P(i) =
    {j != i : y_j = y_i}, N(i) = {j : y_j != y_i} (or the mined pairs). With the weights
    detached (``.detach()``):
        alpha_p = relu(1 + m - S_ip),     alpha_n = relu(S_in + m)
        lse_p(i) = logsumexp_{p in P(i)} (-gamma alpha_p (S_ip - (1 - m)))   (0 if P(i) empty)
        lse_n(i) = logsumexp_{n in N(i)} ( gamma alpha_n (S_in - m))         (0 if N(i) empty)
        l_i = softplus(lse_p(i) + lse_n(i)), then l_i = 0 if P(i) or N(i) is empty
    (``lmu.logsumexp(add_one=False)`` fills masked entries with finfo.min and sets empty rows
    to 0). Reducer ``AvgNonZeroReducer``: mean of the l_i > 0 (0 if none); ``MeanReducer``:
    mean of all b; ``SumReducer``: sum. ``GenericPairLoss`` returns 0 (zero gradient) when
    every pair list has length <= 1.

MultiSimilarityMiner(epsilon)  [miners/multi_similarity_miner.py], as described in
``tools/make_pml_fixtures.py``; mined cases are PML ``loss(emb, labels, miner(emb, labels))``.
"""

import argparse
import json
import os

import numpy as np
import torch
import pytorch_metric_learning
from pytorch_metric_learning import losses, miners, reducers

SEED = 20261219
F64 = torch.float64
torch.set_default_dtype(F64)


# ---------------------------------------------------------------- inputs
def _f32(x):
    return np.asarray(x, dtype=np.float32)


def _pxl(rng, p, l, pool=100):
    labels = np.repeat(rng.choice(pool, size=p, replace=False), l)
    return rng.permutation(labels).astype(np.int64)


def _emb(rng, b, d, kind):
    raw = rng.normal(size=(b, d))
    if kind == "unit":
        return _f32(raw / np.linalg.norm(raw, axis=1, keepdims=True))
    if kind == "same":
        return _f32(np.repeat(raw[:1], b, axis=0))
    return _f32(kind * raw)  # kind = scale of an un-normalized draw


def _antipodal(rng, labels, d):
    """Each class's rows alternate between v_c and -v_c: positives at S = -1."""
    emb = np.zeros((len(labels), d))
    vecs = {c: rng.normal(size=d) for c in np.unique(labels)}
    seen = {}
    for i, c in enumerate(labels):
        sign = 1.0 if seen.get(c, 0) % 2 == 0 else -1.0
        seen[c] = seen.get(c, 0) + 1
        emb[i] = sign * vecs[c] + 0.05 * rng.normal(size=d)
    return _f32(emb)


# ---------------------------------------------------------------- running PML
def _value_and_grad(loss, labels, emb, miner=None):
    x = torch.tensor(np.asarray(emb, dtype=np.float64), dtype=F64, requires_grad=True)
    lab = torch.tensor(np.asarray(labels, dtype=np.int64))
    if miner is not None:
        with torch.no_grad():
            pairs = miner(x, lab)
        value = loss(x, lab, pairs)
        mined = {"pos": int(len(pairs[0])), "neg": int(len(pairs[2]))}
    else:
        value = loss(x, lab)
        mined = None
    value.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return float(value.detach()), grad.numpy().copy(), mined


REDUCERS = {"mean_nonzero": None, "mean": reducers.MeanReducer, "sum": reducers.SumReducer}
PML_REDUCER = {"mean_nonzero": "AvgNonZeroReducer() (default)", "mean": "MeanReducer()",
               "sum": "SumReducer()"}


class Cases:
    def __init__(self):
        self.arrays, self.manifest = {}, []

    def add(self, name, labels, emb, layout, m=0.4, gamma=80.0, reducer="mean_nonzero",
            epsilon=None, note=""):
        assert all(c["name"] != name for c in self.manifest), name
        kw = {"m": m, "gamma": gamma}
        pml_kw = dict(kw)
        if REDUCERS[reducer] is not None:
            pml_kw["reducer"] = REDUCERS[reducer]()
        loss = losses.CircleLoss(**pml_kw)
        miner = None if epsilon is None else miners.MultiSimilarityMiner(epsilon=epsilon)
        value, grad, mined = _value_and_grad(loss, labels, emb, miner)
        ours = {"class": "CircleLoss", "kwargs": dict(kw)}
        if reducer != "mean_nonzero":
            ours["kwargs"]["reducer"] = reducer
        pml = {"class": "pytorch_metric_learning.losses.CircleLoss", "kwargs": kw,
               "reducer": PML_REDUCER[reducer]}
        if miner is not None:
            pml["miner"] = f"pytorch_metric_learning.miners.MultiSimilarityMiner(epsilon={epsilon})"
            ours["miner"] = {"class": "MultiSimilarityMiner", "kwargs": {"epsilon": epsilon}}
        meta = {"name": name, "pml": pml, "ours": ours, "layout": layout, "relation": "exact",
                "note": note}
        if mined is not None:
            meta["mined_pairs"] = mined
        self.manifest.append(meta)
        self.arrays.update({f"{name}/labels": np.asarray(labels, np.int64),
                            f"{name}/embeddings": _f32(emb), f"{name}/value": np.float64(value),
                            f"{name}/grad": grad})
        print(f"{name:44s} value={value:.10g} |grad|max={np.abs(grad).max():.3g}", flush=True)


def build_cases():
    rng = np.random.default_rng(SEED)
    cases = Cases()
    singleton = np.array([5, 5, 5, 7, 7, 7, 9, 9, 9, 11], np.int64)  # class 11 seen once
    # p x l batches, default m = 0.4, gamma = 80.
    cases.add("circle_8x4_d16_unnormalized", _pxl(rng, 8, 4), _emb(rng, 32, 16, 3.0),
              "shuffled 8x4, un-normalized (scale 3)")
    cases.add("circle_36x4_d32_unit", _pxl(rng, 36, 4), _emb(rng, 144, 32, "unit"),
              "shuffled 36x4, unit-normalized")
    cases.add("circle_8x3_d8_unnormalized", _pxl(rng, 8, 3), _emb(rng, 24, 8, 0.7),
              "shuffled 8x3, un-normalized (scale 0.7)")
    cases.add("circle_singleton_b10_d8", singleton, _emb(rng, 10, 8, 1.0),
              "3 classes x 3 + one singleton class (its anchor has no positive: l = 0, "
              "left out of the mean)")
    cases.add("circle_random_labels_b16_d8", rng.integers(0, 5, 16).astype(np.int64),
              _emb(rng, 16, 8, 1.0), "16 random labels of 5 classes, un-normalized")
    # Non-default m / gamma (the paper's face-recognition setting, and a mild one).
    cases.add("circle_m0.25_g256_8x3_d8", _pxl(rng, 8, 3), _emb(rng, 24, 8, 1.0),
              "shuffled 8x3, m = 0.25, gamma = 256", m=0.25, gamma=256.0)
    cases.add("circle_m0.1_g16_6x4_d32_unit", _pxl(rng, 6, 4), _emb(rng, 24, 32, "unit"),
              "shuffled 6x4, unit, m = 0.1, gamma = 16", m=0.1, gamma=16.0)
    # Other reducers.
    for reducer in ("mean", "sum"):
        cases.add(f"circle_reducer_{reducer}_singleton_b10_d8", singleton,
                  _emb(rng, 10, 8, 1.0), f"as circle_singleton_b10_d8 (new draw), PML "
                  f"{PML_REDUCER[reducer]}", reducer=reducer)
    # With PML's MultiSimilarityMiner.
    cases.add("circle_mined_8x4_d16", _pxl(rng, 8, 4), _emb(rng, 32, 16, 1.0),
              "shuffled 8x4, MultiSimilarityMiner(0.1)", epsilon=0.1)
    cases.add("circle_mined_16x4_d32_unit", _pxl(rng, 16, 4), _emb(rng, 64, 32, "unit"),
              "shuffled 16x4, unit, MultiSimilarityMiner(0.1)", epsilon=0.1)
    cases.add("circle_mined_m0.25_g256_random_b20_d8", rng.integers(0, 6, 20).astype(np.int64),
              _emb(rng, 20, 8, 1.0), "20 random labels of 6 classes, m = 0.25, gamma = 256, "
              "MultiSimilarityMiner(0.1)", m=0.25, gamma=256.0, epsilon=0.1)
    # Degenerate batches.
    cases.add("circle_antipodal_4x4_d8", np.repeat(np.arange(4), 4), _antipodal(rng, np.repeat(
        np.arange(4), 4), 8), "each class alternates v_c, -v_c (+ noise): positives near "
              "S = -1, logits up to gamma (2 + m)(2 - m) = 307 (exp overflows)")
    cases.add("circle_identical_rows_b6", np.array([0, 0, 1, 1, 2, 2]), _emb(rng, 6, 8, "same"),
              "degenerate: collapsed embeddings (identical rows)")
    cases.add("circle_one_class_b5", np.full(5, 4), _emb(rng, 5, 8, 1.0),
              "degenerate: one class only (no negative): 0", note="PML returns 0, zero gradient")
    cases.add("circle_every_class_once_b6", rng.choice(50, 6, replace=False).astype(np.int64),
              _emb(rng, 6, 8, 1.0), "degenerate: every class once (no positive): 0",
              note="PML returns 0, zero gradient")
    cases.add("circle_b2_two_classes", np.array([3, 5]), _emb(rng, 2, 8, 1.0),
              "degenerate: b = 2, one negative pair each: 0")
    cases.add("circle_b1", np.array([3]), _emb(rng, 1, 8, 1.0), "degenerate: b = 1: 0")
    return cases


# ---------------------------------------------------------------- NumPy reference
def _np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _lse(v):
    m = np.max(v)
    return m + np.log(np.sum(np.exp(v - m)))


def ms_mine(s, y, eps):
    """PML's MultiSimilarityMiner on the similarity matrix: (kept positive, kept negative) masks."""
    b = len(y)
    pos = (y[:, None] == y[None]) & ~np.eye(b, dtype=bool)
    neg = y[:, None] != y[None]
    if not pos.any() or not neg.any():
        return np.zeros_like(pos), np.zeros_like(neg)
    min_p = np.where(pos, s, np.inf).min(1, keepdims=True)
    max_n = np.where(neg, s, -np.inf).max(1, keepdims=True)
    return pos & (s - eps < max_n), neg & (s + eps > min_p)


def ref_circle_per_anchor(s, pos, neg, m=0.4, gamma=80.0):
    """l_i of PML's formula (float64), given the similarities and the pair masks."""
    out = np.zeros(len(s))
    for i in range(len(s)):
        sp, sn = s[i, pos[i]], s[i, neg[i]]
        if len(sp) == 0 or len(sn) == 0:
            continue
        lp = -gamma * np.maximum(1 + m - sp, 0) * (sp - (1 - m))
        ln = gamma * np.maximum(sn + m, 0) * (sn - m)
        out[i] = np.logaddexp(0.0, _lse(lp) + _lse(ln))
    return out


def ref_circle(y, x, m=0.4, gamma=80.0, reducer="mean_nonzero", epsilon=None):
    """PML's CircleLoss value in float64 (the "all pair lists <= 1" guard included)."""
    y = np.asarray(y)
    s = _np_normalize(np.asarray(x, np.float64))
    s = s @ s.T
    b = len(y)
    pos = (y[:, None] == y[None]) & ~np.eye(b, dtype=bool)
    neg = y[:, None] != y[None]
    if epsilon is not None:
        pos, neg = ms_mine(s, y, epsilon)
    if pos.sum() <= 1 and neg.sum() <= 1:
        return 0.0
    per = ref_circle_per_anchor(s, pos, neg, m, gamma)
    if reducer == "sum":
        return float(per.sum())
    if reducer == "mean":
        return float(per.mean())
    nz = per[per > 0]
    return float(nz.mean()) if len(nz) else 0.0


def check(path):
    data = np.load(path)
    manifest = json.loads(str(data["manifest"]))
    for meta in manifest["cases"]:
        name, kw = meta["name"], meta["ours"]["kwargs"]
        eps = meta["ours"].get("miner", {}).get("kwargs", {}).get("epsilon")
        ref = ref_circle(data[f"{name}/labels"], data[f"{name}/embeddings"], kw["m"], kw["gamma"],
                         kw.get("reducer", "mean_nonzero"), eps)
        v = float(data[f"{name}/value"])
        assert abs(ref - v) <= 1e-9 * max(1.0, abs(v)), (name, ref, v)
    print(f"NumPy float64 reference agrees with {len(manifest['cases'])} stored values (rel. 1e-9)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--out", default=os.path.join(here, os.pardir, "tests", "fixtures", "pml_circle.npz"))
    parser.add_argument("--check", action="store_true",
                        help="only re-check the stored fixtures against the NumPy formula")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    if not args.check:
        cases = build_cases()
        arrays = dict(cases.arrays)
        arrays["manifest"] = np.asarray(json.dumps({
            "generator": "tools/make_pml_circle_fixtures.py",
            "torch": torch.__version__,
            "pytorch_metric_learning": pytorch_metric_learning.__version__,
            "compute_dtype": "float64",
            "seed": SEED,
            "format": "<case>/labels int64, <case>/embeddings float32 (exact inputs), "
                      "<case>/value and <case>/grad float64",
            "cases": cases.manifest,
        }, indent=1))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        np.savez_compressed(out, **arrays)
        print(f"wrote {len(cases.manifest)} cases to {out}")
    check(out)


if __name__ == "__main__":
    main()
