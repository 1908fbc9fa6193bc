"""Records pytorch-metric-learning (PML) 2.9 AccuracyCalculator values as test fixtures.

Runs in the throw-away environment of ``tools/make_pml_fixtures.py`` (PML needs PyTorch;
the accuracy calculator also imports scikit-learn and uses faiss) and writes
``tests/fixtures/pml_accuracy.npz``::

    python3 -m venv /tmp/pml_venv
    /tmp/pml_venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl numpy scipy tqdm scikit-learn faiss-cpu
    /tmp/pml_venv/bin/pip install --no-deps "pytorch-metric-learning==2.9.0"
    /tmp/pml_venv/bin/python tools/make_pml_accuracy_fixtures.py [--out tests/fixtures/pml_accuracy.npz]

Every case is one ``AccuracyCalculator(include=("precision_at_1", "r_precision",
"mean_average_precision_at_r"), device=cpu).get_accuracy(query, query_labels, reference,
reference_labels, ref_includes_query=...)`` call, with PML's defaults otherwise: ``k=None``
(every reference item is ranked) and ``avg_of_avgs=False`` (a mean over queries).

What PML computes [utils/accuracy_calculator.py, utils/inference.py]:

* k-NN: ``FaissKNN()``, a ``faiss.IndexFlatL2`` over the raw float32 embeddings (Euclidean
  ranking), unless the case says otherwise: ``dot_product`` cases pass
  ``knn_func=FaissKNN(index_init_fn=faiss.IndexFlatIP)`` (largest inner product first);
  ``cosine`` cases do the same on unit-normalized copies of the stored embeddings.
* ``ref_includes_query=True``: the first len(query) reference rows must equal the queries
  (PML checks it); faiss searches k + 1 neighbours and drops the FIRST column (the query
  itself when it is strictly nearest: no duplicates in these data).
* R of a query = reference items with its label, minus one with ``ref_includes_query``.
  "Lone" queries (R = 0) are left out of every metric, precision_at_1 included.
* precision_at_1 = mean of rel(1); r_precision = mean of (1/R) Σ_{i<=R} rel(i);
  mean_average_precision_at_r = mean of (1/R) Σ_{i<=R} P(i) rel(i).

keras-featreg must reproduce them with ``precision_at_1`` / ``r_precision`` / ``map_at_r``
(``reference_embeddings=reference, reference_labels=..., reference_includes_query=...,
metric=<case metric>``) within 1e-6. ``--check`` recomputes every stored value with the
float64 NumPy brute force ``tests/_references.py::ref_query_reference``.

Format: ``<case>/reference`` float32 (n, d) and ``<case>/reference_labels`` int64 (n,);
``<case>/query`` float32 (m, d) and ``<case>/query_labels`` int64 (m,) for separate sets
(with ``ref_includes_query`` the queries are the first ``num_queries`` reference rows and
are not stored twice); ``<case>/precision_at_1``, ``<case>/r_precision``,
``<case>/mean_average_precision_at_r`` float64 scalars. The manifest (key ``manifest``)
lists per case ``pml`` (the call), ``ours`` (metric, reference_includes_query,
num_queries), ``layout`` and ``note``.
"""

import argparse
import os
import sys

import faiss
import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKNN

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, os.pardir, "tests")]

from make_pml_fixtures import Cases, _f32, save_fixtures  # noqa: E402

SEED = 20261231
METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
KNN = {
    "euclidean": "FaissKNN() (default: faiss.IndexFlatL2 on the raw embeddings)",
    "dot_product": "FaissKNN(index_init_fn=faiss.IndexFlatIP) on the raw embeddings",
    "cosine": "FaissKNN(index_init_fn=faiss.IndexFlatIP) on unit-normalized embeddings",
}


# ---------------------------------------------------------------- inputs
def _clustered(rng, centers, sizes, spread, scale=None):
    """Rows around `centers[c]` (sizes[c] of each; classes with size 0 absent), shuffled;
    `scale`: per-row norms drawn from [0.5, 2] (for the dot product)."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[labels] + spread * rng.normal(size=(len(labels), centers.shape[1]))
    if scale:
        x *= rng.uniform(0.5, 2.0, size=(len(labels), 1))
    order = rng.permutation(len(labels))
    return _f32(x[order]), LABEL_VALUES[labels[order]]


# Non-contiguous label values: class c is labelled LABEL_VALUES[c].
LABEL_VALUES = np.array([3, 7, 10, 11, 20, 21, 40, 41, 99, 100], np.int64)
REFERENCE_SIZES = [80, 60, 50, 40, 30, 20, 12, 8, 0, 0]  # 300 items, 8 classes
QUERY_SIZES = [20, 15, 15, 10, 10, 10, 8, 6, 6, 0]  # 100 queries; class 8 is lone


# ---------------------------------------------------------------- running PML
def _pml(query, query_labels, reference, reference_labels, includes_query, metric):
    knn = None
    if metric != "euclidean":
        knn = FaissKNN(index_init_fn=faiss.IndexFlatIP)
    if metric == "cosine":
        unit = lambda x: _f32(x / np.linalg.norm(x, axis=1, keepdims=True))  # noqa: E731
        query, reference = unit(query), unit(reference)
    calculator = AccuracyCalculator(include=METRICS, device=torch.device("cpu"), knn_func=knn)
    out = calculator.get_accuracy(query, query_labels, reference, reference_labels,
                                  ref_includes_query=includes_query)
    return {name: np.float64(out[name]) for name in METRICS}


def add_case(cases, name, reference, reference_labels, layout, metric="euclidean",
             query=None, query_labels=None, num_queries=None, note=""):
    """One get_accuracy call: separate sets (`query` given) or ref_includes_query with the
    first `num_queries` reference rows as queries."""
    includes = query is None
    if includes:
        query, query_labels = reference[:num_queries], reference_labels[:num_queries]
    values = _pml(query, query_labels, reference, reference_labels, includes, metric)
    arrays = {"reference": reference, "reference_labels": reference_labels, **values}
    if not includes:
        arrays.update(query=query, query_labels=query_labels)
    meta = {
        "pml": {"class": "AccuracyCalculator", "include": list(METRICS), "k": None,
                "knn_func": KNN[metric], "ref_includes_query": includes},
        "ours": {"metric": metric, "reference_includes_query": includes,
                 "num_queries": int(len(query))},
        "layout": layout, "note": note,
    }
    cases.add(name, meta, arrays)
    print("    " + ", ".join(f"{k}={float(v):.6f}" for k, v in values.items()), flush=True)


def build_cases():
    rng = np.random.default_rng(SEED)
    cases = Cases()
    d, spread = 16, 0.6
    centers = rng.normal(size=(len(LABEL_VALUES), d)) * 0.5
    reference, reference_labels = _clustered(rng, centers, REFERENCE_SIZES, spread)
    query, query_labels = _clustered(rng, centers, QUERY_SIZES, spread)
    add_case(cases, "separate_euclidean", reference, reference_labels,
             "300 references (8 classes of 80..8) x 16, 100 queries of 9 classes",
             query=query, query_labels=query_labels,
             note="the 6 queries of label 99 have no reference item: lone, left out")
    singleton = reference_labels.copy()
    singleton[np.flatnonzero(reference_labels == LABEL_VALUES[7])[0]] = LABEL_VALUES[9]
    add_case(cases, "includes_query_all_euclidean", reference, singleton,
             "query = reference (300 x 16), ref_includes_query=True",
             num_queries=len(reference),
             note="label 100 occurs once: that query is lone (R = 0), left out")
    add_case(cases, "includes_query_prefix_euclidean", reference, reference_labels,
             "queries = the first 120 of 300 references, ref_includes_query=True",
             num_queries=120)
    scaled, scaled_labels = _clustered(rng, centers, REFERENCE_SIZES, spread, scale=True)
    scaled_query, scaled_query_labels = _clustered(rng, centers, QUERY_SIZES, spread, scale=True)
    add_case(cases, "separate_dot_product", scaled, scaled_labels,
             "300 x 16 references with row norms scaled by U[0.5, 2], 100 queries",
             metric="dot_product", query=scaled_query, query_labels=scaled_query_labels)
    add_case(cases, "separate_cosine", scaled, scaled_labels,
             "as separate_dot_product; PML gets unit-normalized copies", metric="cosine",
             query=scaled_query, query_labels=scaled_query_labels)
    return cases


# ---------------------------------------------------------------- check
def load_case(data, meta):
    """(query, query_labels, reference, reference_labels) of a stored case."""
    name = meta["name"]
    reference, reference_labels = data[f"{name}/reference"], data[f"{name}/reference_labels"]
    if meta["ours"]["reference_includes_query"]:
        m = meta["ours"]["num_queries"]
        return reference[:m], reference_labels[:m], reference, reference_labels
    return data[f"{name}/query"], data[f"{name}/query_labels"], reference, reference_labels


def check(path):
    """Recomputes every stored value with the float64 NumPy brute force."""
    import json

    from _references import ref_query_reference

    data = np.load(path)
    manifest = json.loads(str(data["manifest"]))
    worst = 0.0
    for meta in manifest["cases"]:
        ours = meta["ours"]
        ref = ref_query_reference(*load_case(data, meta), metric=ours["metric"],
                                  includes_query=ours["reference_includes_query"])
        expected = {"precision_at_1": ref["precision_at_1"], "r_precision": ref["r_precision"],
                    "mean_average_precision_at_r": ref["map_at_r"]}
        for key, value in expected.items():
            stored = float(data[f"{meta['name']}/{key}"])
            worst = max(worst, abs(value - stored))
            if abs(value - stored) > 1e-6:
                print(f"  {meta['name']}/{key}: PML {stored:.8f}, NumPy {value:.8f}")
    print(f"NumPy float64 brute force vs the {3 * len(manifest['cases'])} stored values: "
          f"max |diff| = {worst:.3g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=os.path.join(HERE, os.pardir, "tests", "fixtures", "pml_accuracy.npz"))
    parser.add_argument("--check", action="store_true",
                        help="only re-check the stored fixtures against the NumPy brute force")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    if not args.check:
        save_fixtures(
            out, build_cases(), "tools/make_pml_accuracy_fixtures.py",
            "<case>/reference float32, <case>/reference_labels int64, <case>/query float32 "
            "and <case>/query_labels int64 (separate sets only), <case>/precision_at_1, "
            "<case>/r_precision, <case>/mean_average_precision_at_r float64", SEED,
            compute_dtype="float32 (faiss k-NN), float64 (metrics)")
    check(out)


if __name__ == "__main__":
    main()
