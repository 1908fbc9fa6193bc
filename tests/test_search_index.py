"""keras_featreg.search: Index (exact and faiss), calibration, matching and bundles,
against float64 NumPy brute force."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from keras_featreg import search
from keras_featreg.search import Index

METRICS = ("euclidean", "cosine", "dot_product")
EPS32 = np.finfo(np.float32).eps


def brute_force(queries, gallery, metric):
    """Float64 distances (smaller is closer) in the metric's own units."""
    q, g = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    if metric == "euclidean":
        return np.sqrt(np.maximum(((q[:, None, :] - g[None]) ** 2).sum(-1), 0))
    if metric == "cosine":
        def unit(x):
            n = np.linalg.norm(x, axis=1, keepdims=True)
            return x / np.where(n > 0, n, 1)
        return 1.0 - unit(q) @ unit(g).T
    return -(q @ g.T)


def clustered(rng, n, d=16, classes=20, spread=0.3):
    centres = rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, d))).astype(np.float32), labels


def tolerance(gallery, queries, metric):
    """A float32 bound on distance errors: a few hundred ulps of the data's scale."""
    scale = max(np.abs(gallery).max(), np.abs(queries).max()) ** 2 * gallery.shape[1]
    if metric == "euclidean":
        return 64 * np.sqrt(EPS32 * scale)
    return 64 * EPS32 * (scale if metric == "dot_product" else 1.0)


# --------------------------------------------------------------------------- exact
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 7, 300])
def test_exact_matches_brute_force(metric, k):
    rng = np.random.default_rng(0)
    gallery, labels = clustered(rng, 300)
    queries, _ = clustered(rng, 41)
    index = Index(metric=metric, query_chunk=16, reference_chunk=70, num_threads=2)
    index.add(gallery[:100], labels=labels[:100])
    index.add(gallery[100:], labels=labels[100:], ids=np.arange(1000, 1200))
    result = index.search(queries, k=k)
    d = brute_force(queries, gallery, metric)
    want = np.argsort(d, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(result.indices, want)
    np.testing.assert_allclose(result.distances, np.take_along_axis(d, want, 1),
                               atol=tolerance(gallery, queries, metric), rtol=0)
    all_ids = np.r_[np.arange(100), np.arange(1000, 1200)]
    np.testing.assert_array_equal(result.ids, all_ids[want])
    np.testing.assert_array_equal(result.labels, labels[want])
    assert result.indices.dtype == np.int64 and result.ids.dtype == np.int64


@pytest.mark.parametrize("metric", METRICS)
def test_result_does_not_depend_on_chunks_or_threads(metric):
    rng = np.random.default_rng(1)
    gallery, _ = clustered(rng, 500, d=8)
    queries, _ = clustered(rng, 60, d=8)
    results = []
    for qc, rc, threads in [(None, None, 1), (7, 33, 2), (60, 500, 1), (1, 1, 2)]:
        index = Index(metric=metric, query_chunk=qc, reference_chunk=rc, num_threads=threads)
        index.add(gallery)
        results.append(index.search(queries, k=9))
    for other in results[1:]:
        # The order is the same; the values may differ by rounding (BLAS kernels differ
        # with the block shape).
        np.testing.assert_array_equal(other.indices, results[0].indices)
        np.testing.assert_allclose(other.distances, results[0].distances, rtol=0,
                                   atol=tolerance(gallery, queries, metric))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_duplicates_are_at_zero_and_ties_go_by_position(metric):
    rng = np.random.default_rng(2)
    gallery = (rng.normal(size=(50, 32)) * 100 + 1000).astype(np.float32)  # large offset
    gallery[[7, 21, 40]] = gallery[30]
    index = Index(metric=metric, reference_chunk=16)
    index.add(gallery)
    result = index.search(gallery[[30]], k=4)
    assert result.indices[0, :4].tolist() == [7, 21, 30, 40]
    assert result.distances[0, :4].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_equal_distances_are_ordered_by_position():
    gallery = np.array([[2.0], [-1.0], [1.0], [-2.0], [0.0]])
    index = Index()
    index.add(gallery)
    assert index.search(np.zeros((1, 1)), k=5).indices.tolist() == [[4, 1, 2, 0, 3]]


def test_float64_is_kept():
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(40, 4))
    index = Index()
    index.add(gallery)
    queries = gallery[:3] + 1e-4
    result = index.search(queries, k=2)
    assert result.distances.dtype == np.float64
    # The expansion's error on a squared distance is c (|a|^2 + |b|^2) (c about 1e-15
    # in float64 for d = 4); on the distance, its square root.
    from keras_featreg.ops.pairwise import expansion_error_coefficient

    bound = np.sqrt(expansion_error_coefficient(4, "float64") * 4 * np.square(gallery).sum(1).max())
    np.testing.assert_allclose(result.distances,
                               np.sort(brute_force(queries, gallery, "euclidean"), 1)[:, :2],
                               rtol=0, atol=bound)
    assert bound < 1e-6  # float64 kept: a float32 bound would be ~1e-3


@pytest.mark.parametrize("metric", METRICS)
def test_exclude_ids_leaves_the_query_out(metric):
    rng = np.random.default_rng(4)
    gallery, _ = clustered(rng, 80)
    index = Index(metric=metric, reference_chunk=32)
    index.add(gallery, ids=np.arange(80) + 500)
    result = index.search(gallery[:20], k=5, exclude_ids=np.arange(20) + 500)
    d = brute_force(gallery[:20], gallery, metric)
    d[np.arange(20), np.arange(20)] = np.inf
    np.testing.assert_array_equal(result.indices, np.argsort(d, 1, kind="stable")[:, :5])
    assert not (result.ids == (np.arange(20) + 500)[:, None]).any()


def test_backend_tensors_are_accepted():
    import keras

    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(20, 3)).astype("float32")
    index = Index()
    index.add(keras.ops.convert_to_tensor(gallery), labels=keras.ops.convert_to_tensor(
        np.arange(20) % 3))
    result = index.search(keras.ops.convert_to_tensor(gallery[:2]), k=1)
    assert result.indices[:, 0].tolist() == [0, 1]


def test_remove_and_reset():
    rng = np.random.default_rng(6)
    gallery, labels = clustered(rng, 30)
    index = Index()
    index.add(gallery, labels=labels)
    index.remove([0, 5])
    assert len(index) == 28 and 0 not in index.ids and 5 not in index.ids
    result = index.search(gallery[[0]], k=1)
    keep = np.setdiff1d(np.arange(30), [0, 5])
    want = keep[np.argmin(brute_force(gallery[[0]], gallery[keep], "euclidean"))]
    assert result.ids[0, 0] == want and result.labels[0, 0] == labels[want]
    index.add(gallery[:2], labels=labels[:2])  # new ids continue after the largest
    assert index.ids[-2:].tolist() == [30, 31]
    with pytest.raises(ValueError, match="must be in the index"):
        index.remove([999])
    index.reset()
    assert len(index) == 0 and index.dim is None
    index.add(np.zeros((2, 5)))  # a new dimension after reset
    assert index.dim == 5


# ----------------------------------------------------------------------- bad input
def test_bad_input_errors():
    index = Index()
    with pytest.raises(ValueError, match="empty"):
        index.search(np.zeros((1, 3)), k=1)
    index.add(np.eye(3), labels=[0, 1, 2])
    cases = [
        (lambda: index.search(np.zeros((1, 4)), k=1), "queries.*3 columns"),
        (lambda: index.search(np.full((1, 3), np.nan), k=1), "NaN"),
        (lambda: index.search(np.zeros((1, 3)), k=0), "k"),
        (lambda: index.search(np.zeros((1, 3)), k=4), "k.*<= the number of items"),
        (lambda: index.search(np.zeros((1, 3)), k=3, exclude_ids=[0]), "minus 1"),
        (lambda: index.search(np.zeros((1, 3)), k=1, exclude_ids=[7]), "exclude_ids"),
        (lambda: index.add(np.zeros((2, 4)), labels=[0, 1]), "embeddings.*3 columns"),
        (lambda: index.add(np.full((1, 3), np.inf), labels=[0]), "NaN or Inf"),
        (lambda: index.add(np.zeros((2, 3)), labels=[0]), "same length"),
        (lambda: index.add(np.zeros((2, 3))), "labels or none"),
        (lambda: index.add(np.zeros((2, 3)), labels=[0, 1], ids=[0, 9]), "already"),
        (lambda: index.add(np.zeros((2, 3)), labels=[0, 1], ids=[8, 8]), "unique"),
        (lambda: Index(metric="hamming"), "metric"),
        (lambda: Index(backend="annoy"), "backend"),
        (lambda: Index(nlist=4), "backend='faiss'"),
        (lambda: index.set_search_params(nprobe=3), "backend='faiss'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_faiss_missing_gives_the_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        Index(backend="faiss")


# ------------------------------------------------------------------------- faiss
def _faiss():
    return pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install "
                               "'keras-featreg[faiss]')")


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_flat_matches_exact(metric):
    _faiss()
    rng = np.random.default_rng(7)
    gallery, labels = clustered(rng, 400)
    queries, _ = clustered(rng, 50)
    exact, flat = Index(metric=metric), Index(metric=metric, backend="faiss")
    for index in (exact, flat):
        index.add(gallery[:150], labels=labels[:150])
        index.add(gallery[150:], labels=labels[150:])
    a, b = exact.search(queries, k=10), flat.search(queries, k=10)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.distances, b.distances,
                               atol=tolerance(gallery, queries, metric), rtol=0)
    excluded = flat.search(gallery[:5], k=3, exclude_ids=np.arange(5))
    np.testing.assert_array_equal(excluded.indices,
                                  exact.search(gallery[:5], k=3, exclude_ids=np.arange(5)).indices)


@pytest.mark.parametrize("kind, params, search_params", [
    ("ivf", {"nlist": 16, "nprobe": 4}, {"nprobe": 16}),
    ("hnsw", {"M": 16, "ef_search": 32}, {"ef_search": 128}),
])
def test_faiss_approximate_recall(kind, params, search_params):
    _faiss()
    rng = np.random.default_rng(8)
    gallery, _ = clustered(rng, 3000, d=16, classes=50)
    queries, _ = clustered(rng, 200, d=16, classes=50)
    exact = Index()
    exact.add(gallery)
    truth = exact.search(queries, k=10).indices
    index = Index(backend="faiss", faiss_index=kind, **params)
    index.add(gallery)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in
                      zip(index.search(queries, k=10).indices, truth)])
    assert recall > 0.5
    index.set_search_params(**search_params)  # exhaustive IVF / a wide HNSW beam
    better = np.mean([len(set(a) & set(b)) / 10 for a, b in
                      zip(index.search(queries, k=10).indices, truth)])
    assert better >= recall and better > 0.97


def test_faiss_parameter_errors():
    _faiss()
    with pytest.raises(ValueError, match="Unknown parameters"):
        Index(backend="faiss", faiss_index="flat", nlist=8)
    with pytest.raises(ValueError, match="nlist"):
        Index(backend="faiss", faiss_index="ivf", nlist=0)
    with pytest.raises(ValueError, match="faiss_index"):
        Index(backend="faiss", faiss_index="pq")
    index = Index(backend="faiss", faiss_index="ivf", nlist=64)
    with pytest.raises(ValueError, match="at least nlist=64"):
        index.add(np.random.default_rng(0).normal(size=(10, 4)))


def test_faiss_remove_rebuilds():
    _faiss()
    rng = np.random.default_rng(9)
    gallery, _ = clustered(rng, 100)
    for kind in ("flat", "hnsw"):
        index = Index(backend="faiss", faiss_index=kind)
        index.add(gallery)
        index.remove(np.arange(10))
        assert len(index) == 90
        assert index.search(gallery[:10], k=1).ids.min() >= 10


# -------------------------------------------------------------------------- files
def _roundtrip(index, tmp_path, queries):
    path = tmp_path / "gallery.idx"
    index.save(path)
    assert sorted(os.listdir(tmp_path)) == ["gallery.idx"]  # no temporary left
    loaded = Index.load(path)
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    if index.labels is not None:
        np.testing.assert_array_equal(loaded.labels, index.labels)
    assert (loaded.metric, loaded.dim, loaded.dtype, loaded.backend) == (
        index.metric, index.dim, index.dtype, index.backend)
    a, b = index.search(queries, k=3), loaded.search(queries, k=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.distances, b.distances)
    return loaded


@pytest.mark.parametrize("metric", METRICS)
def test_save_load_round_trip(metric, tmp_path):
    rng = np.random.default_rng(10)
    gallery, labels = clustered(rng, 60)
    index = Index(metric=metric)
    index.add(gallery[:30], labels=labels[:30])
    index.add(gallery[30:], labels=labels[30:], ids=np.arange(30) * 7 + 100)
    loaded = _roundtrip(index, tmp_path, gallery[:5] + 0.01)
    loaded.add(gallery[:2], labels=labels[:2])  # still incremental, same shift
    index.add(gallery[:2], labels=labels[:2])
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.search(gallery[:4], k=5).distances,
                                  index.search(gallery[:4], k=5).distances)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_save_load_round_trip(kind, tmp_path):
    _faiss()
    rng = np.random.default_rng(11)
    gallery, labels = clustered(rng, 300)
    params = {"nlist": 8} if kind == "ivf" else {}
    index = Index(backend="faiss", faiss_index=kind, **params)
    index.add(gallery, labels=labels)
    loaded = _roundtrip(index, tmp_path, gallery[:5] + 0.01)
    assert loaded.faiss_index == kind and loaded.params == index.params


def test_empty_index_round_trip(tmp_path):
    Index(metric="cosine").save(tmp_path / "empty")
    loaded = Index.load(tmp_path / "empty")
    assert len(loaded) == 0 and loaded.metric == "cosine"


def test_load_refuses_mismatch_and_corrupt_files(tmp_path):
    index = Index(metric="cosine")
    index.add(np.eye(4, dtype=np.float32))
    path = tmp_path / "index.npz"
    index.save(path)
    for expected, message in [({"metric": "euclidean"}, "metric='cosine'"),
                              ({"dim": 8}, "dim=4"), ({"backend": "faiss"}, "backend='exact'")]:
        with pytest.raises(ValueError, match=message):
            Index.load(path, **expected)
    Index.load(path, metric="cosine_similarity", dim=4, backend="exact")  # same ranking
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match="not a readable"):
        Index.load(garbage)
    with pytest.raises(ValueError, match="not a readable"):
        Index.load(tmp_path / "missing.npz")
    # A valid .npz of other arrays, and one whose metadata lies about the shapes.
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no metadata"):
        Index.load(tmp_path / "other.npz")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["metadata"].tobytes())
    meta["dim"] = 5
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "lying.npz", **arrays)
    with pytest.raises(ValueError, match="do not match"):
        Index.load(tmp_path / "lying.npz")
    meta["format"] = "something else"
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "foreign.npz", **arrays)
    with pytest.raises(ValueError, match="format"):
        Index.load(tmp_path / "foreign.npz")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickled_payload_is_never_unpickled(tmp_path, monkeypatch):
    """A crafted file carrying a pickle (as an object array in the .npz, or as the whole
    file) is refused, and the payload's code never runs."""
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tmp_path / "crafted.npz", "w") as z:
        z.writestr("metadata.npy", pickle.dumps(_Payload()))
        with z.open("embeddings.npy", "w") as f:
            np.lib.format.write_array(f, np.array([_Payload()], dtype=object),
                                      allow_pickle=True)
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(_Payload()))
    for name in ("crafted.npz", "raw.pkl"):
        with pytest.raises(ValueError):
            Index.load(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    index = Index()
    index.add(np.eye(3))
    index.save(tmp_path / "kept.npz")
    before = (tmp_path / "kept.npz").read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "kept.npz")
    with pytest.raises(OSError):
        index.save(tmp_path / "new.npz")
    assert sorted(os.listdir(tmp_path)) == ["kept.npz"]
    assert (tmp_path / "kept.npz").read_bytes() == before


# -------------------------------------------------------------------- calibration
def _reference_curve(distances, correct):
    """Precision/recall/F1 for every distinct threshold, by definition (float64)."""
    out = []
    for t in np.unique(distances):
        accepted = distances <= t
        tp = np.sum(accepted & correct)
        fp = np.sum(accepted & ~correct)
        fn = np.sum(~accepted & correct)
        p, r = tp / (tp + fp), tp / (tp + fn)
        out.append((t, p, r, 0.0 if p + r == 0 else 2 * p * r / (p + r)))
    return np.array(out)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_calibrate_matches_the_definition(metric):
    rng = np.random.default_rng(12)
    gallery, labels = clustered(rng, 200, classes=10, spread=0.8)
    queries, query_labels = clustered(rng, 150, classes=14, spread=0.8)  # 4 unseen classes
    index = Index(metric=metric)
    index.add(gallery, labels=labels)
    nearest = index.search(queries, k=1)
    correct = nearest.labels[:, 0] == query_labels
    ref = _reference_curve(nearest.distances[:, 0].astype(np.float64), correct)
    best_f1 = search.calibrate(index, queries, query_labels)
    np.testing.assert_allclose(np.c_[best_f1.thresholds, best_f1.precisions, best_f1.recalls,
                                     best_f1.f1s], ref, rtol=1e-12)
    assert best_f1.f1 == ref[:, 3].max() and best_f1.threshold == ref[np.argmax(ref[:, 3]), 0]
    for target in (0.9, 0.99, 1.0):
        reach = ref[ref[:, 1] >= target]
        if not len(reach):
            with pytest.raises(ValueError, match="best precision"):
                search.calibrate(index, queries, query_labels, target_precision=target)
            continue
        c = search.calibrate(index, queries, query_labels, target_precision=target)
        assert c.threshold == reach[-1, 0] and c.precision >= target
        assert c.recall == reach[-1, 2]
        labels_out, d = search.match(index, queries, c)
        accepted = d <= c.threshold
        np.testing.assert_array_equal(labels_out[~accepted], -1)
        np.testing.assert_array_equal(labels_out[accepted], nearest.labels[accepted, 0])
        assert np.mean(labels_out[accepted] == query_labels[accepted]) == pytest.approx(c.precision)


def test_calibration_config_plot_and_errors(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(13)
    gallery, labels = clustered(rng, 100, classes=5)
    index = Index()
    index.add(gallery, labels=labels)
    c = search.calibrate(index, gallery + 0.05, labels)
    again = search.Calibration.from_config(json.loads(json.dumps(c.to_config())))
    assert again.threshold == c.threshold
    np.testing.assert_array_equal(again.f1s, c.f1s)
    ax = c.plot()
    ax.figure.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
    unlabelled = Index()
    unlabelled.add(gallery)
    with pytest.raises(ValueError, match="labels"):
        search.calibrate(unlabelled, gallery, labels)
    with pytest.raises(ValueError, match="target_precision"):
        search.calibrate(index, gallery, labels, target_precision=1.5)
    with pytest.raises(ValueError, match="same length"):
        search.calibrate(index, gallery, labels[:3])
    with pytest.raises(ValueError, match="threshold"):
        search.match(index, gallery, float("nan"))
    cosine = Index(metric="cosine")
    cosine.add(gallery, labels=labels)
    with pytest.raises(ValueError, match="calibrated with metric"):
        search.match(cosine, gallery, c)


# ------------------------------------------------------------------------ bundles
def _embedding_model(dim_in=6, dim_out=4):
    import keras

    inputs = keras.Input((dim_in,))
    x = keras.layers.Dense(dim_out, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(
        inputs)
    return keras.Model(inputs, x)


def test_bundle_round_trip_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(14)
    model = _embedding_model()
    raw, labels = clustered(rng, 120, d=6, classes=6, spread=0.1)
    index = Index(metric="cosine")
    index.add(model.predict(raw, verbose=0), labels=labels)
    calibration = search.calibrate(index, model.predict(raw + 0.01, verbose=0), labels)
    bundle = search.SearchBundle(model, index, calibration)
    queries = raw[:7] + 0.02
    want_labels, want_d = bundle.match(queries)
    want = bundle.lookup(queries, k=3)
    path = tmp_path / "bundle"
    bundle.save(path)
    assert sorted(os.listdir(path)) == ["bundle.json", "index.npz", "model.keras"]
    np.save(tmp_path / "queries.npy", queries)
    code = (
        "import sys, numpy as np\n"
        "from keras_featreg.search import SearchBundle\n"
        f"b = SearchBundle.load({str(path)!r})\n"
        f"q = np.load({str(tmp_path / 'queries.npy')!r})\n"
        "labels, d = b.match(q)\n"
        "r = b.lookup(q, k=3)\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, labels=labels, d=d, ids=r.ids)\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["labels"], want_labels)
        np.testing.assert_array_equal(out["ids"], want.ids)
        np.testing.assert_allclose(out["d"], want_d, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="exists"):
        bundle.save(path)
    bundle.save(path, overwrite=True)
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_bundle_errors(tmp_path):
    model = _embedding_model()
    index = Index()
    index.add(np.eye(4, dtype=np.float32), labels=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="model"):
        search.SearchBundle("model", index)
    with pytest.raises(ValueError, match="index"):
        search.SearchBundle(model, "index")
    with pytest.raises(ValueError, match="calibrated threshold"):
        search.SearchBundle(model, index).match(np.zeros((1, 6)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="not a readable search bundle"):
        search.SearchBundle.load(tmp_path / "nothing")
    (tmp_path / "nothing" / "bundle.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a search bundle"):
        search.SearchBundle.load(tmp_path / "nothing")
