"""NearestNeighbors: a gallery as non-trainable weights and the top-k in the graph.

Checked against a NumPy float64 brute force (ids exactly, on data without near-ties;
distances within float32 rounding bounds), under XLA, through a ``.keras`` round trip and
through ``model.export()`` (TensorFlow and JAX), plus the argument errors.
"""

import os

import keras
import numpy as np
import pytest

from keras_featreg import SVMax, backend
from keras_featreg.layers import NearestNeighbors
from keras_featreg.ops.pairwise import expansion_error_coefficient
from _helpers import export_and_reload, require_tf_saved_model_export, to_np

METRICS = ("euclidean", "squared_euclidean", "cosine", "cosine_similarity", "dot_product")
# Each name computes and returns its ranking (as keras_featreg.search.Index does).
RANKING = {"euclidean": "euclidean", "squared_euclidean": "euclidean", "cosine": "cosine",
           "cosine_similarity": "cosine", "dot_product": "dot_product"}
EPS32 = float(np.finfo(np.float32).eps)


def reference(queries, candidates, metric):
    """float64 ``(b, n)`` distances of `metric`'s ranking (smaller is closer: Euclidean,
    ``1 - cos``, negated dot product) and the order nearest first."""
    q, c = np.asarray(queries, np.float64), np.asarray(candidates, np.float64)
    ranking = RANKING[metric]
    if ranking == "euclidean":
        values = np.sqrt(((q[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    elif ranking == "cosine":
        values = 1.0 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            c / np.linalg.norm(c, axis=1, keepdims=True)).T
    else:
        values = -(q @ c.T)
    return values, np.argsort(values, axis=1, kind="stable")


def tolerance(queries, candidates, metric):
    """Float32 bound on a returned value, from the expansion's rounding coefficient
    ``c = 2 gamma_{d+2}`` (:func:`expansion_error_coefficient`) times the scale of the
    terms: ``|q|^2 + |c|^2`` for squared distances, 2 for unit rows (cosine), ``|q| |c|`` for
    dot products; the Euclidean distance is compared through its square."""
    d = queries.shape[1]
    coeff = expansion_error_coefficient(d, "float32")
    q2 = float(np.max((np.asarray(queries, np.float64) ** 2).sum(1)))
    c2 = float(np.max((np.asarray(candidates, np.float64) ** 2).sum(1)))
    ranking = RANKING[metric]
    if ranking == "euclidean":
        return 4 * coeff * (q2 + c2)
    if ranking == "cosine":
        return 4 * coeff * 2.0
    return 4 * coeff * np.sqrt(q2 * c2)


def assert_matches_reference(out, queries, candidates, metric, k, ids=None, labels=None):
    values, order = reference(queries, candidates, metric)
    top = order[:, :k]
    # No near-ties: consecutive reference values up to the (k+1)-th differ by more than twice
    # the tolerance, so float32 cannot reorder them.
    tol = tolerance(queries, candidates, metric)
    euclidean = RANKING[metric] == "euclidean"
    ranked = values**2 if euclidean else values  # the tolerance is on squared distances
    sorted_vals = np.take_along_axis(ranked, order, axis=1)
    gaps = np.abs(np.diff(sorted_vals[:, : k + 1], axis=1))
    assert gaps.min() > 4 * tol, "test data has near-ties"
    ids = np.arange(candidates.shape[0]) if ids is None else np.asarray(ids)
    got_ids = to_np(out["ids"])
    assert got_ids.dtype == np.int32
    np.testing.assert_array_equal(got_ids, ids[top])
    got = to_np(out["distances"]).astype(np.float64)
    want = np.take_along_axis(values, top, axis=1)
    if euclidean:  # compare squares: the bound is on squared distances
        np.testing.assert_allclose(got**2, want**2, rtol=4 * EPS32, atol=tol)
    else:
        np.testing.assert_allclose(got, want, rtol=4 * EPS32, atol=tol)
    if labels is not None:
        np.testing.assert_array_equal(to_np(out["labels"]), np.asarray(labels)[top])
    else:
        assert "labels" not in out


def data(rng, n=40, d=6, b=7):
    return (rng.normal(size=(n, d)).astype("float32") + 0.5,
            rng.normal(size=(b, d)).astype("float32") + 0.5)


# ------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("metric", METRICS)
def test_matches_float64_brute_force(metric, rng):
    gallery, queries = data(rng)
    ids = rng.permutation(1000)[:40] + 7
    labels = np.arange(40) % 5
    layer = NearestNeighbors(4, metric=metric, candidates=gallery, ids=ids, labels=labels)
    assert_matches_reference(layer(queries), queries, gallery, metric, 4, ids, labels)


@pytest.mark.parametrize("k", [1, 9, 40])
def test_k_from_one_to_all_candidates_without_labels(k, rng):
    gallery, queries = data(rng)
    layer = NearestNeighbors(k, candidates=gallery)
    if k == 40:  # every candidate: compare the order only where there are no near-ties
        values, order = reference(queries, gallery, "euclidean")
        np.testing.assert_array_equal(to_np(layer(queries)["ids"]), order)
    else:
        assert_matches_reference(layer(queries), queries, gallery, "euclidean", k)


def test_exact_ties_and_duplicates_come_in_gallery_order():
    if keras.backend.backend() == "torch":
        pytest.skip("torch.topk does not promise an order among equal values")
    gallery = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    out = NearestNeighbors(3, candidates=gallery, ids=[5, 6, 7, 8])(
        np.array([[1.0, 0.0]], "float32"))
    np.testing.assert_array_equal(to_np(out["ids"]), [[5, 7, 6]])
    np.testing.assert_array_equal(to_np(out["distances"])[0, :2], [0.0, 0.0])


def test_float64_layer(rng):
    backend_name = keras.backend.backend()
    if backend_name == "torch":
        pytest.skip("Keras 3's torch backend computes float64 in float32 (see test_float64.py)")
    gallery, queries = data(rng)

    def run():
        layer = NearestNeighbors(3, candidates=gallery, dtype="float64")
        out = layer(queries.astype("float64"))
        assert keras.backend.standardize_dtype(out["distances"].dtype) == "float64"
        assert_matches_reference(out, queries, gallery, "euclidean", 3)

    if backend_name == "jax":
        import jax

        with jax.enable_x64(True):
            run()
    else:
        run()


def test_mixed_precision_keeps_a_float32_gallery(rng):
    gallery, queries = data(rng)
    keras.config.set_dtype_policy("mixed_float16")
    layer = NearestNeighbors(3, candidates=gallery)
    assert keras.backend.standardize_dtype(layer.candidates.dtype) == "float32"
    out = layer(queries)
    assert keras.backend.standardize_dtype(out["distances"].dtype) == "float32"
    # the queries are rounded to float16 by the layer's autocast; the gallery is not
    q16 = queries.astype("float16").astype("float32")
    np.testing.assert_array_equal(to_np(out["ids"]), reference(q16, gallery, "euclidean")[1][:, :3])


def _functional(layer, dim):
    inputs = keras.Input((dim,))
    return keras.Model(inputs, layer(inputs))


def test_jit_compiled_predict(rng):
    if keras.backend.backend() not in ("tensorflow", "jax"):
        pytest.skip("jit_compile=True is XLA on TensorFlow and JAX only")
    gallery, queries = data(rng, n=64, d=8, b=10)
    labels = np.arange(64) % 3
    model = _functional(NearestNeighbors(5, "cosine", candidates=gallery, labels=labels), 8)
    model.compile(jit_compile=True)
    out = model.predict(queries, batch_size=4, verbose=0)  # several batches, a ragged last one
    assert_matches_reference(out, queries, gallery, "cosine", 5, labels=labels)


def test_set_candidates_replaces_the_gallery(rng):
    gallery, queries = data(rng)
    layer = NearestNeighbors(2, num_candidates=40, dim=6, has_labels=True)
    model = _functional(layer, 6)
    assert layer.built and [tuple(w.shape) for w in layer.weights] == [(40, 6), (40,), (40,)]
    assert all(not w.trainable for w in layer.weights)
    layer.set_candidates(gallery, labels=np.arange(40) // 4)
    assert_matches_reference(model.predict(queries, verbose=0), queries, gallery, "euclidean",
                             2, labels=np.arange(40) // 4)
    other = gallery[::-1] * 2.0
    layer.set_candidates(other, ids=np.arange(40) + 100, labels=np.zeros(40, "int64"))
    assert_matches_reference(model.predict(queries, verbose=0), queries, other, "euclidean", 2,
                             ids=np.arange(40) + 100, labels=np.zeros(40))
    assert layer.trainable_weights == []


# -------------------------------------------------------------- saving and export


def test_keras_round_trip_keeps_the_gallery(rng, tmp_path):
    gallery, queries = data(rng)
    ids, labels = np.arange(40) * 3, np.arange(40) % 4
    model = _functional(
        NearestNeighbors(3, "dot_product", candidates=gallery, ids=ids, labels=labels,
                         name="knn"), 6)
    expected = model.predict(queries, verbose=0)
    path = os.path.join(tmp_path, "knn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("knn")
    assert layer.get_config()["num_candidates"] == 40 and layer.get_config()["dim"] == 6
    assert layer.get_config()["metric"] == "dot_product" and layer.has_labels
    np.testing.assert_array_equal(to_np(layer.candidates), gallery)
    np.testing.assert_array_equal(to_np(layer.ids), ids)
    got = loaded.predict(queries, verbose=0)
    for key in ("distances", "ids", "labels"):
        np.testing.assert_array_equal(got[key], expected[key])
    assert_matches_reference(got, queries, gallery, "dot_product", 3, ids, labels)


def test_metric_is_its_ranking_and_the_config_round_trips():
    from keras_featreg.distances import CosineDistance, CosineSimilarity

    layer = NearestNeighbors(2, metric=CosineSimilarity(), num_candidates=5, dim=3)
    assert layer.metric == "cosine" and layer.distance == CosineDistance()
    clone = NearestNeighbors.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.num_candidates == 5
    assert not clone.built
    assert NearestNeighbors(1, "squared_euclidean").metric == "euclidean"


def test_same_results_as_search_index(rng):
    """The layer and the host-side keras_featreg.search.Index agree: ids exactly, distances
    in the same units (Euclidean, 1 - cos, negated dot product)."""
    from keras_featreg.search import Index

    gallery, queries = data(rng)
    ids, labels = np.arange(40) * 7 + 3, np.arange(40) % 6
    for metric in ("euclidean", "cosine", "dot_product"):
        index = Index(metric=metric)
        index.add(gallery, labels=labels, ids=ids)
        want = index.search(queries, k=5)
        got = NearestNeighbors(5, metric, candidates=gallery, ids=ids, labels=labels)(queries)
        np.testing.assert_array_equal(to_np(got["ids"]), want.ids)
        np.testing.assert_array_equal(to_np(got["labels"]), want.labels)
        np.testing.assert_allclose(to_np(got["distances"]), want.distances, rtol=4 * EPS32,
                                   atol=tolerance(queries, gallery, metric))


def test_export_then_query(rng, tmp_path):
    require_tf_saved_model_export()
    gallery, queries = data(rng, n=30, d=5, b=6)
    labels = np.arange(30) % 4
    model = _functional(NearestNeighbors(3, candidates=gallery, ids=np.arange(30) + 1000,
                                         labels=labels), 5)
    expected = model.predict(queries, verbose=0)
    served = export_and_reload(model, tmp_path)
    for q, want in ((queries, expected), (queries[:2], model.predict(queries[:2], verbose=0))):
        out = {key: np.asarray(value) for key, value in served.serve(q).items()}
        assert set(out) == {"distances", "ids", "labels"}
        np.testing.assert_array_equal(out["ids"], want["ids"])
        np.testing.assert_array_equal(out["labels"], want["labels"])
        np.testing.assert_allclose(out["distances"], want["distances"], rtol=8 * EPS32,
                                   atol=tolerance(q, gallery, "euclidean"))
    assert_matches_reference(served.serve(queries), queries, gallery, "euclidean", 3,
                             np.arange(30) + 1000, labels)


def test_embedding_model_and_search_exported_as_one_artefact(rng, tmp_path):
    """Raw inputs -> embedding (regularized while training) -> ids of the nearest gallery
    items, one SavedModel."""
    require_tf_saved_model_export()
    keras.utils.set_random_seed(0)
    raw = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu")(raw)
    embedding = keras.layers.Dense(8, activity_regularizer=SVMax(1.0))(hidden)
    embedding = keras.layers.UnitNormalization()(embedding)
    embedder = keras.Model(raw, embedding)
    gallery_raw = rng.normal(size=(50, 12)).astype("float32")
    gallery = embedder.predict(gallery_raw, verbose=0)
    labels = np.arange(50) % 5
    search = NearestNeighbors(4, "cosine", candidates=gallery, ids=np.arange(50) + 500,
                              labels=labels)
    model = keras.Model(raw, search(embedder(raw)))
    queries_raw = rng.normal(size=(9, 12)).astype("float32")
    expected = model.predict(queries_raw, verbose=0)
    served = export_and_reload(model, tmp_path)
    out = {key: np.asarray(value) for key, value in served.serve(queries_raw).items()}
    np.testing.assert_array_equal(out["ids"], expected["ids"])
    np.testing.assert_array_equal(out["labels"], expected["labels"])
    queries = embedder.predict(queries_raw, verbose=0)
    assert_matches_reference(out, queries, gallery, "cosine", 4, np.arange(50) + 500, labels)


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize("k", [0, -1, 2.0, True, None])
def test_bad_k(k):
    with pytest.raises(ValueError, match="`k` must be an integer"):
        NearestNeighbors(k, num_candidates=3, dim=2)


def test_k_above_the_number_of_candidates():
    with pytest.raises(ValueError, match=r"`k` must be in \[1, number of candidates\] = \[1, 3\]"):
        NearestNeighbors(4, candidates=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="Received: k=4"):
        NearestNeighbors(4, num_candidates=3, dim=2)
    layer = NearestNeighbors(4)
    with pytest.raises(ValueError, match="Received: k=4"):
        layer.set_candidates(np.zeros((3, 2)))
    assert not layer.built


@pytest.mark.parametrize("metric", ["manhattan", None, 3])
def test_bad_metric(metric):
    with pytest.raises(ValueError, match="`metric` must be one of"):
        NearestNeighbors(1, metric=metric)


def test_wrong_query_dimension_and_rank():
    layer = NearestNeighbors(1, candidates=np.eye(3, dtype="float32"))
    with pytest.raises(ValueError, match=r"`queries` must have 3 features.*queries.shape=\(2, 4\)"):
        layer(np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="`queries` must have rank >= 2"):
        layer(np.zeros((3,), "float32"))
    with pytest.raises(ValueError, match="`queries` must have rank <= 2"):
        layer(np.zeros((2, 3, 1), "float32"))
    with pytest.raises(ValueError, match="`queries` must have 3 features"):
        keras.Model(*(lambda i: (i, layer(i)))(keras.Input((5,))))


def test_wrong_candidates():
    with pytest.raises(ValueError, match=r"`candidates` must be a non-empty matrix.*shape=\(3,\)"):
        NearestNeighbors(1, candidates=np.zeros(3))
    with pytest.raises(ValueError, match="`candidates` must be a non-empty matrix"):
        NearestNeighbors(1, candidates=np.zeros((0, 3)))
    with pytest.raises(ValueError, match="`candidates` must be finite"):
        NearestNeighbors(1, candidates=np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="`candidates` must be numeric"):
        NearestNeighbors(1, candidates=np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="`candidates` must have dim=4 columns"):
        NearestNeighbors(1, candidates=np.zeros((2, 3)), dim=4)
    layer = NearestNeighbors(1, candidates=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"fixed once the layer is built.*\(2, 3\).*shape=\(3, 3\)"):
        layer.set_candidates(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="built without labels"):
        layer.set_candidates(np.zeros((2, 3)), labels=[0, 1])


def test_wrong_ids_and_labels():
    with pytest.raises(ValueError, match=r"`ids` must hold one value per candidate \(2\)"):
        NearestNeighbors(1, candidates=np.zeros((2, 3)), ids=[1, 2, 3])
    with pytest.raises(ValueError, match="`labels` must hold integers"):
        NearestNeighbors(1, candidates=np.zeros((2, 3)), labels=[0.5, 1.0])
    with pytest.raises(ValueError, match="`ids` must be distinct. Received: 1 repeated"):
        NearestNeighbors(1, candidates=np.zeros((3, 3)), ids=[4, 5, 4])
    with pytest.raises(ValueError, match="`ids` must fit in int32"):
        NearestNeighbors(1, candidates=np.zeros((2, 3)), ids=[0, 2**40])
    with pytest.raises(ValueError, match="pass `candidates` with them"):
        NearestNeighbors(1, ids=[0, 1])
    with pytest.raises(ValueError, match="`labels` must be given"):
        NearestNeighbors(1, candidates=np.zeros((2, 3)), has_labels=True)
    layer = NearestNeighbors(1, candidates=np.zeros((2, 3)), labels=[4, 5])
    with pytest.raises(ValueError, match="built with labels"):
        layer.set_candidates(np.ones((2, 3)))
    np.testing.assert_array_equal(to_np(layer.labels), [4, 5])  # unchanged
    assert NearestNeighbors(1, candidates=np.zeros((2, 3)), ids=[3.0, 4.0]).ids.dtype == "int32"


def test_no_gallery_shape():
    with pytest.raises(ValueError, match="needs its gallery's shape"):
        NearestNeighbors(1)(np.zeros((2, 3), "float32"))


# ------------------------------------------------------- the exportable top-k


def test_top_k_by_rounds_equals_top_k_under_a_symbolic_batch():
    """JAX: what ``model.export()`` traces (a symbolic batch) takes the argmax rounds of
    ``backend.top_k``; same values and indices as ``lax.top_k``, ties and -inf included."""
    if keras.backend.backend() != "jax":
        pytest.skip("symbolic dimensions exist on JAX only")
    import jax
    from jax import export

    x = np.random.default_rng(0).normal(size=(6, 11)).astype("float32")
    x[1, [2, 5, 7]] = 3.0  # ties: lower index first
    x[2, :] = -np.inf  # all -inf: distinct indices 0, 1, 2, ...
    x[3, [0, 4]] = np.inf
    x[4, :] = 0.5
    (batch,) = export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, 11), np.float32)

    def f(v):
        assert backend.has_symbolic_shape(v)
        return backend.top_k(v, 5)

    values, indices = export.export(jax.jit(f))(spec).call(x)
    want_values, want_indices = jax.lax.top_k(x, 5)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_indices))
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))
    assert not backend.has_symbolic_shape(x)
