"""Records pytorch-metric-learning (PML) 2.9 miner selections (and losses through them) as fixtures.

Runs in the throw-away environment of ``tools/make_pml_fixtures.py`` (PML needs PyTorch)
and writes ``tests/fixtures/pml_miners.npz``::

    /tmp/pml_venv/bin/python tools/make_pml_miner_fixtures.py [--out tests/fixtures/pml_miners.npz]

Format: the npz + JSON-manifest layout of ``tools/make_pml_fixtures.py`` (``/`` as the
separator). Every case ``<case>`` stores

* ``<case>/labels`` int64 (b,), ``<case>/embeddings`` float32 (b, d) (the exact inputs;
  PML computes on them cast to ``torch.float64``);
* ``<case>/matrix`` float64 (b, b): the matrix PML's miner mined on (its distance of the
  float64 embeddings). The tests run our miner on this very matrix, so a selection
  differs only if the logic does;
* the selection: ``<case>/triplets`` int64 (k, 3) ``(a, p, n)`` rows for the triplet
  miners, ``<case>/pos_pairs`` and ``<case>/neg_pairs`` int64 (k, 2) for the pair miners
  (PML's index tuples, in PML's order);
* ``DistanceWeightedMiner``: ``<case>/weights`` float64 (b, b), the sampling weights PML
  hands to ``lmu.get_random_triplet_indices`` (captured by wrapping it; its NaN rows, 0/0
  for anchors without an eligible negative, stored as 0). The draws themselves are random:
  the tests compare the weights and test our sampler statistically;
* ``UniformHistogramMiner``: ``<case>/pos_bins``, ``<case>/neg_bins`` int64 (b, b): the bin
  of every positive / negative pair under PML's ``get_bins`` edges and ``filter_by_bin``
  conditions (-1 off the pairs);
* cases with a loss: ``<case>/value`` float64 and ``<case>/grad`` float64 (b, d), PML's
  ``loss(emb, labels, miner(emb, labels))`` and its gradient. For the two sampling miners
  the loss cases are built so that the draw cannot matter (every bin holds one pair up to
  order; every anchor has one eligible negative and one positive), PML's duplicates
  then weigh nothing in a mean / a symmetric pair. No loss is recorded where PML's
  pair-loss guard fires (every index list of length <= 1 gives 0 whatever the pairs; our
  losses have no such guard) nor for AngularMiner's documented ``eps`` difference.

The manifest (key ``manifest``) lists per case ``miner`` (PML class and kwargs), ``ours``
(our miner class and kwargs, our distance name), ``loss`` (PML loss and ours, or absent),
``layout`` and ``note``.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_pml_fixtures as base  # noqa: E402
from pytorch_metric_learning import losses, miners, reducers  # noqa: E402
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance  # noqa: E402
from pytorch_metric_learning.miners import distance_weighted_miner as _dwm  # noqa: E402

SEED = 20261221
F64 = torch.float64
RAW = "LpDistance(normalize_embeddings=False)"


def _lp(normalize=False):
    return LpDistance(normalize_embeddings=normalize)


def _matrix(distance, emb):
    with torch.no_grad():
        return distance(torch.tensor(np.asarray(emb, np.float64))).numpy().copy()


def _idx(t):
    return t.detach().cpu().numpy().astype(np.int64)


def _run_miner(miner, labels, emb):
    with torch.no_grad():
        return miner(torch.tensor(np.asarray(emb, np.float64)), base._lbl(labels))


def _loss_value_grad(loss, miner, labels, emb):
    def fn(x):
        lab = base._lbl(labels)
        return loss(x, lab, miner(x, lab))

    value, grad, _ = base._value_and_grad(fn, emb)
    return np.float64(value), grad


# ----------------------------------------------------------------------------- inputs
def _layouts(rng, d=8):
    """(name, labels, embeddings) batches, the degenerate ones included."""
    out = []
    for p, l in ((4, 3), (3, 4), (6, 2)):
        out.append((f"p{p}xl{l}", base._pxl(rng, p, l), base._emb(rng, p * l, d, "unit")))
    labels = rng.integers(0, 4, size=14)
    out.append(("random_b14", labels, base._emb(rng, 14, d, "unit")))
    out.append(("one_class", np.zeros(6, np.int64), base._emb(rng, 6, d, "unit")))
    out.append(("no_positives", np.arange(6, dtype=np.int64), base._emb(rng, 6, d, "unit")))
    x = base._emb(rng, 8, d, "unit")
    x[1], x[5] = x[0], x[0]  # duplicates, across classes too
    out.append(("duplicates", np.array([0, 0, 1, 1, 2, 2, 3, 3]), x))
    out.append(("b2", np.array([3, 3]), base._emb(rng, 2, d, "unit")))
    out.append(("b2_two_classes", np.array([1, 2]), base._emb(rng, 2, d, "unit")))
    return out


def _pair_arrays(out):
    a1, p, a2, n = (_idx(t) for t in out)
    return {"pos_pairs": np.stack([a1, p], 1).reshape(-1, 2),
            "neg_pairs": np.stack([a2, n], 1).reshape(-1, 2)}


def _triplet_arrays(out):
    a, p, n = (_idx(t) for t in out)
    return {"triplets": np.stack([a, p, n], 1).reshape(-1, 3)}


def _add(cases, name, miner_meta, ours, labels, emb, matrix, arrays, loss=None, note="",
         layout=""):
    meta = {"pml": {"class": "pytorch_metric_learning.losses.(none)", "kwargs": {}},
            "miner": miner_meta, "ours": ours, "layout": layout, "note": note}
    arrays = {"labels": np.asarray(labels, np.int64), "embeddings": base._f32(emb),
              "matrix": matrix, **arrays}
    if loss is not None:
        meta["pml"] = loss["pml"]
        meta["loss"] = {"ours": loss["ours"]}
        arrays["value"], arrays["grad"] = loss["value"], loss["grad"]
    cases.add(name, meta, arrays)


def _contrastive_sum():
    """PML ContrastiveLoss with a SumReducer == our ContrastiveLoss(margin=1, reducer="sum")."""
    kw = {"pos_margin": 0, "neg_margin": 1}
    return (losses.ContrastiveLoss(**kw, reducer=reducers.SumReducer(), distance=_lp()),
            base._pml_meta("ContrastiveLoss", {**kw, "reducer": "SumReducer()"}, distance=RAW),
            {"class": "ContrastiveLoss", "kwargs": {"margin": 1.0, "reducer": "sum"}})


def _triplet_loss(margin=0.2, distance=None):
    distance = distance or _lp()
    cos = isinstance(distance, CosineSimilarity)
    return (losses.TripletMarginLoss(margin=margin, distance=distance),
            base._pml_meta("TripletMarginLoss", {"margin": margin},
                           distance="CosineSimilarity()" if cos else RAW),
            {"class": "TripletLoss", "kwargs": {
                "margin": margin, "distance": "cosine_similarity" if cos else "euclidean"}})


def _ms_loss():
    return (losses.MultiSimilarityLoss(),
            base._pml_meta("MultiSimilarityLoss", {}, distance="CosineSimilarity()"),
            {"class": "MultiSimilarityLoss", "kwargs": {}})


def _with_loss(spec, miner, labels, emb):
    """PML's loss through the miner, or None where PML's pair-loss guard fires (every
    index list of length <= 1: ``GenericPairLoss`` then returns 0 whatever the pairs)."""
    loss, pml_meta, ours = spec
    if not isinstance(loss, losses.TripletMarginLoss):
        out = _run_miner(miner, labels, emb)
        if all(len(t) <= 1 for t in out):
            return None
    value, grad = _loss_value_grad(loss, miner, labels, emb)
    return {"pml": pml_meta, "ours": ours, "value": value, "grad": grad}


# -------------------------------------------------------------------------- miners
def triplet_margin_cases(cases, rng):
    configs = [(0.2, "all"), (0.2, "hard"), (0.2, "semihard"), (0.2, "easy"),
               (0.5, "semihard"), (0.05, "all")]
    for i, (name, labels, emb) in enumerate(_layouts(rng)):
        margin, kind = configs[i % len(configs)]
        for cos in (False, True) if i < 3 else (False,):
            distance = CosineSimilarity() if cos else _lp()
            miner = miners.TripletMarginMiner(margin=margin, type_of_triplets=kind,
                                              distance=distance)
            out = _run_miner(miner, labels, emb)
            lspec = _triplet_loss(0.2, CosineSimilarity() if cos else None)
            _add(cases, f"triplet_margin_{kind}_m{margin}_{'cos_' if cos else ''}{name}",
                 {"class": "TripletMarginMiner", "kwargs": {
                     "margin": margin, "type_of_triplets": kind},
                  "distance": "CosineSimilarity()" if cos else RAW},
                 {"class": "TripletMarginMiner",
                  "kwargs": {"margin": margin, "type_of_triplets": kind},
                  "distance": "cosine_similarity" if cos else "euclidean"},
                 labels, emb, _matrix(distance, emb), _triplet_arrays(out),
                 loss=_with_loss(lspec, miner, labels, emb), layout=name)


def batch_easy_hard_cases(cases, rng):
    configs = [
        ("easy", "semihard", None, None), ("hard", "hard", None, None),
        ("semihard", "hard", None, None), ("easy", "easy", None, None),
        ("all", "hard", None, None), ("hard", "all", None, None), ("all", "all", None, None),
        ("easy", "semihard", (0.2, 1.2), (0.5, 1.6)), ("semihard", "easy", None, None),
    ]
    layouts = _layouts(rng)
    for i, (name, labels, emb) in enumerate(layouts):
        pos, neg, pos_range, neg_range = configs[i % len(configs)]
        kw = {"pos_strategy": pos, "neg_strategy": neg, "allowed_pos_range": pos_range,
              "allowed_neg_range": neg_range}
        for output in ("pairs", "triplets"):
            cos = output == "pairs" and i in (2, 4)
            distance = CosineSimilarity() if cos else _lp()
            kwd = dict(kw)
            if cos and pos_range is not None:
                kwd["allowed_pos_range"], kwd["allowed_neg_range"] = (0.0, 0.95), (-0.5, 0.9)
            miner = miners.BatchEasyHardMiner(**kwd, distance=distance)
            out = _run_miner(miner, labels, emb)
            if output == "pairs":
                spec = _ms_loss() if cos else _contrastive_sum()
            else:
                spec = _triplet_loss()
            ours_kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwd.items()}
            _add(cases, f"batch_easy_hard_{pos}_{neg}_{output}_{'cos_' if cos else ''}{name}",
                 {"class": "BatchEasyHardMiner", "kwargs": base._kw_str(kwd),
                  "distance": "CosineSimilarity()" if cos else RAW},
                 {"class": "BatchEasyHardMiner", "kwargs": {**ours_kw, "output": output},
                  "distance": "cosine_similarity" if cos else "euclidean"},
                 labels, emb, _matrix(distance, emb), _pair_arrays(out),
                 loss=_with_loss(spec, miner, labels, emb), layout=name)


def angular_cases(cases, rng):
    for i, (name, labels, emb) in enumerate(_layouts(rng)):
        angle = (20, 35, 45)[i % 3]
        if i == 1:
            emb = base._f32(1.7 * emb)  # un-normalized: PML's angle uses the raw embeddings
            name += "_scaled"
        miner = miners.AngularMiner(angle=angle)
        out = _run_miner(miner, labels, emb)
        note = ""
        if name == "duplicates":
            note = ("x0 = x1 = x5: PML's pairwise_distance adds eps = 1e-6 per coordinate, "
                    "so the triplets (0, 1, 5) and (1, 0, 5) get angle atan(1/2) > angle "
                    "there and are mined; ours have D_ap = 0, angle 0, not mined.")
        loss = None if note else _with_loss(_triplet_loss(), miner, labels, emb)
        _add(cases, f"angular_{angle}_{name}",
             {"class": "AngularMiner", "kwargs": {"angle": angle}, "distance": "default"},
             {"class": "AngularMiner", "kwargs": {"angle": angle}, "distance": "euclidean"},
             labels, emb, _matrix(_lp(), emb), _triplet_arrays(out),
             loss=loss, layout=name, note=note)
    # A collapsed batch: PML mines every triplet (eps), ours none (documented).
    labels = np.array([0, 0, 1, 1, 2])
    emb = np.repeat(base._emb(rng, 1, 8, "unit"), 5, axis=0)
    miner = miners.AngularMiner(angle=20)
    _add(cases, "angular_20_collapsed",
         {"class": "AngularMiner", "kwargs": {"angle": 20}, "distance": "default"},
         {"class": "AngularMiner", "kwargs": {"angle": 20}, "distance": "euclidean"},
         labels, emb, _matrix(_lp(), emb), _triplet_arrays(_run_miner(miner, labels, emb)),
         layout="collapsed", note="documented difference: PML mines all (eps), ours none")


def hdc_cases(cases, rng):
    fractions = (0.5, 0.3, 0.1, 1.0, 0.25, 0.7)
    for i, (name, labels, emb) in enumerate(_layouts(rng)):
        f = fractions[i % len(fractions)]
        for cos in (False, True) if i < 2 else (False,):
            distance = CosineSimilarity() if cos else _lp()
            miner = miners.HDCMiner(filter_percentage=f, distance=distance)
            out = _run_miner(miner, labels, emb)
            spec = _ms_loss() if cos else _contrastive_sum()
            _add(cases, f"hdc_{f}_{'cos_' if cos else ''}{name}",
                 {"class": "HDCMiner", "kwargs": {"filter_percentage": f},
                  "distance": "CosineSimilarity()" if cos else RAW},
                 {"class": "HDCMiner", "kwargs": {"filter_percentage": f},
                  "distance": "cosine_similarity" if cos else "euclidean"},
                 labels, emb, _matrix(distance, emb), _pair_arrays(out),
                 loss=_with_loss(spec, miner, labels, emb), layout=name,
                 note="the two orders of a pair tie: compare modulo ties at the cut-off")


def _captured_weights(miner, labels, emb):
    captured = {}
    original = _dwm.lmu.get_random_triplet_indices

    def spy(*args, **kwargs):
        captured["weights"] = kwargs["weights"].detach().numpy().copy()
        return original(*args, **kwargs)

    _dwm.lmu.get_random_triplet_indices = spy
    try:
        out = _run_miner(miner, labels, emb)
    finally:
        _dwm.lmu.get_random_triplet_indices = original
    return np.nan_to_num(captured["weights"], nan=0.0), out


def _separated_pairs(rng, groups, d=8, noise=1e-3):
    """Classes of 2 whose members are orthogonal; each member has one close negative.

    Classes (2k, 2k+1) on axes 4k..4k+3: class 2k = {e_{4k}, e_{4k+1}}, class 2k+1 =
    {e_{4k} + .6 e_{4k+2}, e_{4k+1} + .6 e_{4k+3}} (normalized): every anchor's only
    negative closer than 1.4 is its twin (distance .58); the others are at ~sqrt(2)."""
    rows, labels = [], []
    for k in range(groups):
        e = np.eye(d)[4 * k: 4 * k + 4]
        rows += [e[0], e[1], e[0] + 0.6 * e[2], e[1] + 0.6 * e[3]]
        labels += [2 * k, 2 * k, 2 * k + 1, 2 * k + 1]
    x = np.asarray(rows) + noise * rng.normal(size=(4 * groups, d))
    order = rng.permutation(len(labels))
    return np.asarray(labels, np.int64)[order], base._unit(x[order])


def distance_weighted_cases(cases, rng):
    specs = [(0.5, 1.4, 8), (0.5, 1.4, 16), (0.3, 1.2, 16), (0.5, 1.4, 32), (0.8, 1.6, 8)]
    layouts = _layouts(rng)
    layouts.append(("p4xl4_d32", base._pxl(rng, 4, 4), base._emb(rng, 16, 32, "unit")))
    layouts.append(("p6xl3_d16", base._pxl(rng, 6, 3), base._emb(rng, 18, 16, "unit")))
    for i, (name, labels, emb) in enumerate(layouts):
        cutoff, nonzero, _ = specs[i % len(specs)]
        kw = {"cutoff": cutoff, "nonzero_loss_cutoff": nonzero}
        weights, out = _captured_weights(miners.DistanceWeightedMiner(**kw), labels, emb)
        _add(cases, f"distance_weighted_c{cutoff}_n{nonzero}_{name}",
             {"class": "DistanceWeightedMiner", "kwargs": kw, "distance": "default"},
             {"class": "DistanceWeightedMiner",
              "kwargs": {**kw, "embedding_size": int(emb.shape[1])}, "distance": "euclidean"},
             labels, emb, _matrix(LpDistance(), emb),
             {"weights": weights, **_triplet_arrays(out)}, layout=name,
             note="triplets: one random PML draw (not compared); weights: exact")
    for groups in (1, 2):
        labels, emb = _separated_pairs(rng, groups)
        kw = {"cutoff": 0.5, "nonzero_loss_cutoff": 1.4}
        miner = miners.DistanceWeightedMiner(**kw)
        weights, out = _captured_weights(miner, labels, emb)
        assert np.all((weights > 0).sum(axis=1) == 1), weights
        _add(cases, f"distance_weighted_deterministic_{groups}",
             {"class": "DistanceWeightedMiner", "kwargs": kw, "distance": "default"},
             {"class": "DistanceWeightedMiner", "kwargs": {**kw, "embedding_size": 8},
              "distance": "euclidean"},
             labels, emb, _matrix(LpDistance(), emb),
             {"weights": weights, **_triplet_arrays(out)},
             loss=_with_loss(_triplet_loss(), miner, labels, emb),
             layout=f"{2 * groups} classes x 2, one eligible negative per anchor",
             note="each anchor: one positive, one negative of weight 1: PML's two draws "
                  "per anchor repeat one triplet, which a mean does not see")


def _pml_bins(miner, values):
    if len(values) == 0:
        return np.zeros(0, np.int64)
    bins = miner.get_bins(values)
    out = np.full(len(values), -1, np.int64)
    last = len(bins) - 2
    for i in range(len(bins) - 1):
        high = values < bins[i + 1] if i != last else values <= bins[i + 1]
        hit = ((bins[i] <= values) & high).numpy()
        assert np.all(out[hit] == -1)
        out[hit] = i
    return out


def _bin_arrays(miner, labels, matrix):
    lab = base._lbl(labels)
    a1, p, a2, n = (t.numpy() for t in
                    __import__("pytorch_metric_learning.utils.loss_and_miner_utils",
                               fromlist=["x"]).get_all_pairs_indices(lab))
    mat = torch.tensor(matrix)
    arrays = {}
    for key, (rows, cols) in {"pos_bins": (a1, p), "neg_bins": (a2, n)}.items():
        full = np.full(matrix.shape, -1, np.int64)
        full[rows, cols] = _pml_bins(miner, mat[rows, cols])
        arrays[key] = full
    return arrays


def uniform_histogram_cases(cases, rng):
    specs = [(100, 10, 10), (10, 3, 5), (5, 1, 2), (20, 2, 2), (3, 4, 4)]
    for i, (name, labels, emb) in enumerate(_layouts(rng)):
        nb, pp, npb = specs[i % len(specs)]
        kw = {"num_bins": nb, "pos_per_bin": pp, "neg_per_bin": npb}
        miner = miners.UniformHistogramMiner(**kw, distance=_lp())
        matrix = _matrix(_lp(), emb)
        out = _run_miner(miner, labels, emb)
        _add(cases, f"uniform_histogram_{nb}_{pp}_{npb}_{name}",
             {"class": "UniformHistogramMiner", "kwargs": kw, "distance": RAW},
             {"class": "UniformHistogramMiner", "kwargs": kw, "distance": "euclidean"},
             labels, emb, matrix, {**_bin_arrays(miner, labels, matrix), **_pair_arrays(out)},
             layout=name, note="pairs: one random PML draw (not compared); bins: exact")
    # Loss cases where the draw cannot matter: every bin holds one pair (both orders).
    found = 0
    while found < 2:
        labels = base._pxl(rng, 3, 2)
        emb = base._emb(rng, 6, 8, "unit")
        kw = {"num_bins": 200, "pos_per_bin": 1, "neg_per_bin": 1}
        miner = miners.UniformHistogramMiner(**kw, distance=_lp())
        matrix = _matrix(_lp(), emb)
        arrays = _bin_arrays(miner, labels, matrix)
        ok = True
        for key in ("pos_bins", "neg_bins"):
            bins = arrays[key]
            for b in np.unique(bins[bins >= 0]):
                vals = matrix[bins == b]
                ok &= len(vals) == 2 and vals[0] == vals[1]
        if not ok:
            continue
        out = _run_miner(miner, labels, emb)
        _add(cases, f"uniform_histogram_deterministic_{found}",
             {"class": "UniformHistogramMiner", "kwargs": kw, "distance": RAW},
             {"class": "UniformHistogramMiner", "kwargs": kw, "distance": "euclidean"},
             labels, emb, matrix, {**arrays, **_pair_arrays(out)},
             loss=_with_loss(_contrastive_sum(), miner, labels, emb), layout="3 x 2",
             note="every bin holds one pair in its two orders (equal distance): any draw of "
                  "one gives the same symmetric contrastive sum")
        found += 1


def build_cases():
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    cases = base.Cases()
    triplet_margin_cases(cases, rng)
    batch_easy_hard_cases(cases, rng)
    angular_cases(cases, rng)
    hdc_cases(cases, rng)
    distance_weighted_cases(cases, rng)
    uniform_histogram_cases(cases, rng)
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--out", default=os.path.join(here, os.pardir, "tests", "fixtures", "pml_miners.npz"))
    args = parser.parse_args()
    base.save_fixtures(
        os.path.abspath(args.out), build_cases(), "tools/make_pml_miner_fixtures.py",
        "<case>/labels int64, <case>/embeddings float32, <case>/matrix float64 (PML's mined "
        "matrix); <case>/triplets (k, 3) or <case>/pos_pairs, <case>/neg_pairs (k, 2) int64; "
        "<case>/weights float64 (DistanceWeightedMiner); <case>/pos_bins, <case>/neg_bins "
        "int64 (UniformHistogramMiner); <case>/value, <case>/grad float64 where a loss is "
        "recorded", SEED)


if __name__ == "__main__":
    main()
