"""keras_featreg.evaluation on separate query and reference sets, and precision@1 / R-precision.

* Parity with an independent float64 NumPy brute force (``tests/_references.py::
  ref_query_reference``: full distance matrix, stable argsort) for the three rankings, with
  and without ``reference_includes_query``, with the exact Index built internally and with a
  faiss flat Index passed as ``index=``.
* Parity with pytorch-metric-learning 2.9's ``AccuracyCalculator`` (``tests/fixtures/
  pml_accuracy.npz``, written by ``tools/make_pml_accuracy_fixtures.py``) within 1e-6.
* The leave-one-out forms of the new ``precision_at_1`` and ``r_precision``.
"""

import json
import os

import numpy as np
import pytest

from _references import ref_query_reference
from keras_featreg.evaluation import (
    evaluate_retrieval,
    map_at_r,
    precision_at_1,
    r_precision,
    recall_at_k,
)
from keras_featreg.search import Index

PML_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "pml_accuracy.npz")
METRICS = ("euclidean", "cosine", "dot_product")
KS = (1, 2, 4, 8)


def _clustered(rng, sizes, dim=8, spread=0.7, centers=None):
    """Rows around one centre per class (sizes[c] of class c), shuffled, float32."""
    if centers is None:
        centers = rng.standard_normal((len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[labels] + spread * rng.standard_normal((labels.size, centers.shape[1]))
    x *= rng.uniform(0.5, 2.0, (labels.size, 1))  # varied norms: the 3 rankings differ
    order = rng.permutation(labels.size)
    return x[order].astype(np.float32), labels[order], centers


def _query_reference(rng):
    """150 references of 6 classes (one of a single item), 60 queries of 7 (one lone)."""
    reference, reference_labels, centers = _clustered(rng, [40, 35, 30, 25, 19, 1, 0])
    query, query_labels, _ = _clustered(rng, [12, 10, 10, 10, 8, 5, 5], centers=centers)
    return query, query_labels, reference, reference_labels


def _ours(query, query_labels, **kwargs):
    return {
        "recall": recall_at_k(query, query_labels, ks=KS, **kwargs),
        "precision_at_1": precision_at_1(query, query_labels, **kwargs),
        "map_at_r": map_at_r(query, query_labels, **kwargs),
        "r_precision": r_precision(query, query_labels, **kwargs),
    }


def _assert_close(got, expected, atol):
    assert got["recall"].keys() == expected["recall"].keys()
    for k in expected["recall"]:
        assert abs(got["recall"][k] - expected["recall"][k]) <= atol, ("recall", k)
    for key in ("precision_at_1", "map_at_r", "r_precision"):
        assert abs(got[key] - expected[key]) <= atol, key
    return max([abs(got[key] - expected[key]) for key in ("precision_at_1", "map_at_r",
                                                          "r_precision")]
               + [abs(got["recall"][k] - expected["recall"][k]) for k in KS])


# --------------------------------------------------------------------------- #
# Parity with the NumPy brute force
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("includes_query", [False, True])
def test_exact_matches_brute_force(rng, metric, includes_query):
    query, query_labels, reference, reference_labels = _query_reference(rng)
    if includes_query:
        query, query_labels = reference[:70], reference_labels[:70]
    expected = ref_query_reference(query, query_labels, reference, reference_labels, KS,
                                   metric, includes_query)
    got = _ours(query, query_labels, reference_embeddings=reference,
                reference_labels=reference_labels, reference_includes_query=includes_query,
                metric=metric, chunk_size=17)
    _assert_close(got, expected, atol=1e-12)
    assert 0.2 < expected["map_at_r"] < 0.9  # neither trivial nor hopeless


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("includes_query", [False, True])
def test_faiss_flat_index_matches_brute_force(rng, metric, includes_query):
    pytest.importorskip("faiss", reason="faiss (pip install faiss-cpu) is not installed")
    query, query_labels, reference, reference_labels = _query_reference(rng)
    if includes_query:
        query, query_labels = reference[:70], reference_labels[:70]
    index = Index(metric=metric, backend="faiss", faiss_index="flat")
    index.add(reference, labels=reference_labels)
    expected = ref_query_reference(query, query_labels, reference, reference_labels, KS,
                                   metric, includes_query)
    got = _ours(query, query_labels, index=index, reference_includes_query=includes_query,
                metric=metric)
    _assert_close(got, expected, atol=1e-12)


def test_approximate_index_plugs_in(rng):
    pytest.importorskip("faiss", reason="faiss (pip install faiss-cpu) is not installed")
    query, query_labels, reference, reference_labels = _query_reference(rng)
    exact = _ours(query, query_labels, reference_embeddings=reference,
                  reference_labels=reference_labels)
    ivf = Index(backend="faiss", faiss_index="ivf", nlist=4, nprobe=4)  # every cell: exact
    ivf.add(reference, labels=reference_labels)
    _assert_close(_ours(query, query_labels, index=ivf), exact, atol=1e-12)
    hnsw = Index(backend="faiss", faiss_index="hnsw", ef_search=200)
    hnsw.add(reference, labels=reference_labels)
    assert abs(map_at_r(query, query_labels, index=hnsw) - exact["map_at_r"]) < 0.05


def test_prebuilt_exact_index_and_float64(rng):
    query, query_labels, reference, reference_labels = _query_reference(rng)
    expected = _ours(query, query_labels, reference_embeddings=reference,
                     reference_labels=reference_labels)
    index = Index()
    index.add(reference[:50], labels=reference_labels[:50])
    index.add(reference[50:], labels=reference_labels[50:])  # several adds, one gallery
    _assert_close(_ours(query, query_labels, index=index), expected, atol=1e-12)
    got = _ours(query.astype(np.float64), query_labels,
                reference_embeddings=reference.astype(np.float64),
                reference_labels=reference_labels)
    _assert_close(got, expected, atol=1e-12)


def test_chunks_and_threads_do_not_change_results(rng):
    query, query_labels, reference, reference_labels = _query_reference(rng)
    args = dict(reference_embeddings=reference, reference_labels=reference_labels)
    base = _ours(query, query_labels, chunk_size=2048, num_threads=1, **args)
    assert _ours(query, query_labels, chunk_size=1, num_threads=2, **args) == base


# --------------------------------------------------------------------------- #
# Semantics: lone queries, self-exclusion, ties, leave-one-out agreement
# --------------------------------------------------------------------------- #
def test_lone_queries_are_left_out_of_every_metric():
    reference = np.array([[0.0], [1.0], [10.0]])
    ref_labels = [0, 0, 1]
    query = np.array([[0.1], [9.0], [5.0]])
    # Query 2 has label 2: no reference item; queries 0 (hit) and 1 (hit) remain.
    kwargs = dict(reference_embeddings=reference, reference_labels=ref_labels)
    assert recall_at_k(query, [0, 1, 2], ks=1, **kwargs) == {1: 1.0}
    assert precision_at_1(query, [0, 1, 2], **kwargs) == 1.0
    value, per_query = map_at_r(query, [0, 1, 2], return_per_query=True, **kwargs)
    assert value == 1.0 and np.isnan(per_query[2])
    value, per_query = r_precision(query, [0, 1, 2], return_per_query=True, **kwargs)
    assert value == 1.0 and per_query.tolist()[:2] == [1.0, 1.0]


def test_reference_includes_query_excludes_self_by_id():
    # Rows 0 and 1 are duplicates with different labels; query 0 is row 0.
    x = np.array([[0.0], [0.0], [0.5], [3.0], [3.2]])
    y = [0, 1, 0, 1, 1]
    kwargs = dict(reference_embeddings=x, reference_labels=y, reference_includes_query=True)
    # Query 0: itself excluded, the duplicate (label 1) is nearest: a miss at 1.
    value, per_query = map_at_r(x[:1], y[:1], return_per_query=True, **kwargs)
    assert per_query.tolist() == [0.0]
    assert recall_at_k(x[:1], y[:1], ks=(1, 2), **kwargs) == {1: 0.0, 2: 1.0}
    # R leaves the query itself out: query = row 1 (label 1) has R = 2 (rows 3, 4).
    assert r_precision(x[1:2], [1], reference_embeddings=x[1:], reference_labels=y[1:],
                       reference_includes_query=True) == 0.5


def test_ties_by_reference_position_not_pessimistic():
    # The query is at distance 1 of a positive (position 1) and a negative (position 0).
    reference = np.array([[-1.0], [1.0]])
    query = np.array([[0.0]])
    assert precision_at_1(query, [0], reference_embeddings=reference,
                          reference_labels=[1, 0]) == 0.0
    assert precision_at_1(query, [0], reference_embeddings=reference[::-1],
                          reference_labels=[0, 1]) == 1.0
    # Leave-one-out: pessimistic whatever the order.
    x = np.array([[0.0], [-1.0], [1.0]])
    assert precision_at_1(x, [0, 1, 0]) == 0.5  # query 0 misses (tie), query 2 hits 0 ...
    assert precision_at_1(x[[0, 2, 1]], [0, 0, 1]) == 0.5  # ... in either order


@pytest.mark.parametrize("metric", METRICS)
def test_leave_one_out_equals_reference_includes_query_without_ties(rng, metric):
    _, _, x, y = _query_reference(rng)
    loo = _ours(x, y, metric=metric)
    ref = _ours(x, y, metric=metric, reference_embeddings=x, reference_labels=y,
                reference_includes_query=True)
    # recall_at_k's leave-one-out form counts the singleton as a miss; the rest agrees.
    n, lone = len(y), 1
    for k in KS:
        assert loo["recall"][k] == pytest.approx(ref["recall"][k] * (n - lone) / n, abs=1e-12)
    for key in ("precision_at_1", "map_at_r", "r_precision"):
        assert loo[key] == pytest.approx(ref[key], abs=1e-12), key


def test_leave_one_out_precision_at_1_and_r_precision_match_brute_force(rng):
    x, y, _ = _clustered(rng, [20, 15, 10, 4, 1], dim=4, spread=1.0)
    expected = ref_query_reference(x, y, x, y, metric="euclidean", includes_query=True)
    assert precision_at_1(x, y, chunk_size=7) == pytest.approx(expected["precision_at_1"],
                                                               abs=1e-12)
    assert r_precision(x, y, chunk_size=7) == pytest.approx(expected["r_precision"], abs=1e-12)
    value, per_query = r_precision(x, y, return_per_query=True)
    assert np.isnan(per_query[y == 4]).all() and np.isfinite(per_query[y != 4]).all()
    with pytest.raises(ValueError, match="precision@1 needs at least one label that occurs"):
        precision_at_1(x[:3], [0, 1, 2])
    with pytest.raises(ValueError, match="R-precision needs"):
        r_precision(x[:3], [0, 1, 2])


def test_evaluate_retrieval_one_search(rng):
    query, query_labels, reference, reference_labels = _query_reference(rng)
    kwargs = dict(reference_embeddings=reference, reference_labels=reference_labels)
    out = evaluate_retrieval(query, query_labels, ks=(1, 4), r_precision=True, prefix="q_",
                             **kwargs)
    assert list(out) == ["q_recall@1", "q_recall@4", "q_nmi", "q_map@r", "q_r_precision"]
    assert out["q_recall@4"] == recall_at_k(query, query_labels, ks=4, **kwargs)[4]
    assert out["q_map@r"] == map_at_r(query, query_labels, **kwargs)
    assert out["q_r_precision"] == r_precision(query, query_labels, **kwargs)
    loo = evaluate_retrieval(reference, reference_labels, ks=1, nmi=False, r_precision=True)
    assert loo["r_precision"] == r_precision(reference, reference_labels)


# --------------------------------------------------------------------------- #
# Parity with pytorch-metric-learning's AccuracyCalculator
# --------------------------------------------------------------------------- #
def _pml_cases():
    if not os.path.exists(PML_FILE):
        return []
    with np.load(PML_FILE) as data:
        return json.loads(str(data["manifest"]))["cases"]


@pytest.mark.parametrize("meta", _pml_cases(), ids=lambda meta: meta["name"])
def test_pml_accuracy_calculator_parity(meta):
    name, ours = meta["name"], meta["ours"]
    with np.load(PML_FILE) as data:
        reference, reference_labels = data[f"{name}/reference"], data[f"{name}/reference_labels"]
        if ours["reference_includes_query"]:
            m = ours["num_queries"]
            query, query_labels = reference[:m], reference_labels[:m]
        else:
            query, query_labels = data[f"{name}/query"], data[f"{name}/query_labels"]
        expected = {key: float(data[f"{name}/{key}"]) for key in
                    ("precision_at_1", "r_precision", "mean_average_precision_at_r")}
    kwargs = dict(reference_embeddings=reference, reference_labels=reference_labels,
                  reference_includes_query=ours["reference_includes_query"],
                  metric=ours["metric"])
    got = {"precision_at_1": precision_at_1(query, query_labels, **kwargs),
           "r_precision": r_precision(query, query_labels, **kwargs),
           "mean_average_precision_at_r": map_at_r(query, query_labels, **kwargs)}
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-6, (key, got[key], value)
    assert got["precision_at_1"] == recall_at_k(query, query_labels, ks=1, **kwargs)[1]


def test_pml_fixture_is_present():
    assert len(_pml_cases()) >= 4, f"missing or empty {PML_FILE}"


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
def _bad_cases():
    q, ref = np.random.rand(6, 3), np.random.rand(10, 3)
    ql, rl = np.arange(6) % 2, np.arange(10) % 2
    labelled = Index()
    labelled.add(ref, labels=rl)
    unlabelled = Index()
    unlabelled.add(ref)
    return [
        ("only embeddings", dict(reference_embeddings=ref),
         r"`reference_embeddings` and `reference_labels` must be given together"),
        ("only labels", dict(reference_labels=rl), "must be given together"),
        ("includes without reference", dict(reference_includes_query=True),
         "must be given together.*reference_includes_query=True"),
        ("length", dict(reference_embeddings=ref, reference_labels=rl[:9]),
         r"len\(reference_embeddings\)=10, len\(reference_labels\)=9"),
        ("query length", dict(labels=ql[:5], reference_embeddings=ref, reference_labels=rl),
         r"len\(embeddings\)=6, len\(labels\)=5"),
        ("dimension", dict(reference_embeddings=ref[:, :2], reference_labels=rl),
         r"`reference_embeddings` must have 3 columns.*shape=\(10, 2\)"),
        ("index dimension", dict(embeddings=q[:, :2], index=labelled),
         r"`embeddings` must have 3 columns"),
        ("index plus embeddings", dict(index=labelled, reference_embeddings=ref),
         r"`reference_embeddings` and `reference_labels` must then be None"),
        ("index plus labels", dict(index=labelled, reference_labels=rl), "must then be None"),
        ("index without labels", dict(index=unlabelled), "with its labels"),
        ("not an index", dict(index="faiss"), "keras_featreg.search.Index"),
        ("index metric", dict(index=labelled, metric="cosine"),
         r"`metric` must be the metric of `index` \('euclidean'\)"),
        ("ks", dict(reference_embeddings=ref, reference_labels=rl, ks=(1, 11)),
         r"<= the number of reference items \(10\)"),
        ("ks with self", dict(reference_embeddings=ref, reference_labels=rl, ks=10,
                              embeddings=ref[:3], labels=rl[:3], reference_includes_query=True),
         r"without the query itself \(9\)"),
        ("includes longer", dict(embeddings=ref, labels=rl, reference_embeddings=q,
                                 reference_labels=ql, reference_includes_query=True),
         r"len\(embeddings\)=10, len\(reference set\)=6"),
        ("includes not prefix", dict(reference_embeddings=ref, reference_labels=rl,
                                     reference_includes_query=True),
         "must be the first len\\(embeddings\\) rows"),
        ("includes flag", dict(reference_embeddings=ref, reference_labels=rl,
                               reference_includes_query=1), "must be a bool"),
        ("all lone", dict(labels=ql + 5, reference_embeddings=ref, reference_labels=rl),
         "No query has a same-label item"),
        ("NaN reference", dict(reference_embeddings=np.full((10, 3), np.nan),
                               reference_labels=rl), "`reference_embeddings` contains NaN"),
    ]


@pytest.mark.parametrize(
    "function,case",
    [(function, case)
     for function in (recall_at_k, precision_at_1, map_at_r, r_precision, evaluate_retrieval)
     for case in _bad_cases()
     if "ks" not in case[1] or function in (recall_at_k, evaluate_retrieval)],
    ids=lambda value: value[0] if isinstance(value, tuple) else value.__name__,
)
def test_bad_input(function, case):
    _, kwargs, match = case
    args = dict(embeddings=np.random.rand(6, 3), labels=np.arange(6) % 2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        function(**args)
