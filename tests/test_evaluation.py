"""Tests for keras_featreg.evaluation: Recall@K, MAP@R, NMI, embed, callback."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_featreg.callbacks import RetrievalEvaluation
from keras_featreg.evaluation import (
    embed,
    evaluate_retrieval,
    map_at_r,
    nmi,
    recall_at_k,
)


# --------------------------------------------------------------------------- #
# Brute-force float64 references: full distance matrix, explicit loops.
# --------------------------------------------------------------------------- #
def _distances(x, metric="euclidean"):
    x = np.asarray(x, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "dot_product":
        d = -(x @ x.T)
    else:
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return d


def _ranked_neighbours(d, i):
    """Neighbours of i, nearest first; at equal distance different labels first."""
    return sorted((j for j in range(len(d)) if j != i), key=lambda j: d[i, j])


def reference_recall(x, y, ks, metric="euclidean"):
    d = _distances(x, metric)
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(y)):
            neighbours = _ranked_neighbours(d, i)[:k]
            hits += any(y[j] == y[i] for j in neighbours)
        out[k] = hits / len(y)
    return out


def reference_map_at_r(x, y, metric="euclidean"):
    d = _distances(x, metric)
    aps = []
    for i in range(len(y)):
        r = sum(1 for j in range(len(y)) if j != i and y[j] == y[i])
        if r == 0:
            continue
        neighbours = _ranked_neighbours(d, i)[:r]
        correct, total = 0, 0.0
        for rank, j in enumerate(neighbours, start=1):
            if y[j] == y[i]:
                correct += 1
                total += correct / rank
        aps.append(total / r)
    return float(np.mean(aps))


def _random_case(rng, n, dim, num_classes):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, n)
    return x, y


# --------------------------------------------------------------------------- #
# Recall@K
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n,dim,num_classes", [(40, 2, 3), (97, 8, 5), (150, 16, 30), (60, 3, 60)])
def test_recall_matches_brute_force(rng, n, dim, num_classes):
    x, y = _random_case(rng, n, dim, num_classes)
    ks = (1, 2, 4, 8)
    expected = reference_recall(x, y, ks)
    got = recall_at_k(x, y, ks)
    assert list(got) == list(ks)
    for k in ks:
        assert got[k] == pytest.approx(expected[k], abs=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 41, 10_000])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_recall_chunked_equals_unchunked(rng, chunk_size, num_threads):
    x, y = _random_case(rng, 80, 6, 7)
    full = recall_at_k(x, y, chunk_size=10_000, num_threads=1)
    assert recall_at_k(x, y, chunk_size=chunk_size, num_threads=num_threads) == full
    assert full == pytest.approx(reference_recall(x, y, (1, 2, 4, 8)))


def test_recall_larger_case_threads_and_chunks_agree(rng):
    centers = rng.standard_normal((20, 32)) * 0.5
    y = rng.integers(0, 20, 2500)
    x = (centers[y] + rng.standard_normal((2500, 32))).astype(np.float32)
    results = [recall_at_k(x, y, chunk_size=c, num_threads=t)
               for c, t in ((4096, 1), (256, 2), (999, 3))]
    assert results[0] == results[1] == results[2]
    assert 0.0 < results[0][1] < results[0][8] < 1.0


def test_recall_hand_computed():
    # 1-D points, labels 0 0 1 0 1 at 0, 1, 3, 10, 12.
    x = np.array([[0.0], [1.0], [3.0], [10.0], [12.0]])
    y = np.array([0, 0, 1, 0, 1])
    # R@1: queries 0 and 1 hit; 2 (nn = 1), 3 (nn = 12), 4 (nn = 10) miss.
    # R@2: query 4's two nearest are 10 (label 0) and 3 (label 1): hit.
    # R@4: query 2 reaches 12 at rank 4, query 3 reaches 1 at rank 3.
    assert recall_at_k(x, y, ks=(1, 2, 4)) == {1: 0.4, 2: 0.6, 4: 1.0}


def test_recall_ties_are_pessimistic_and_singletons_miss():
    # Query 0 has a positive (1) and a negative (2) both at distance 1.
    x = np.array([[0.0], [1.0], [-1.0]])
    y = np.array([0, 0, 1])
    # q0: tie -> miss at k=1; q1: hit; q2: only label 1 -> never hits.
    assert recall_at_k(x, y, ks=(1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
    # Collapsed embeddings must not look perfect.
    assert recall_at_k(np.zeros((10, 4)), np.arange(10) % 2, ks=1) == {1: 0.0}


def test_recall_metrics(rng):
    x, y = _random_case(rng, 70, 5, 4)
    for metric in ("cosine", "dot_product"):
        expected = reference_recall(x, y, (1, 4), metric=metric)
        assert recall_at_k(x, y, (1, 4), metric=metric) == pytest.approx(expected)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert recall_at_k(unit, y, metric="euclidean") == recall_at_k(x, y, metric="cosine")


def test_recall_far_from_origin_is_translation_invariant(rng):
    x, y = _random_case(rng, 60, 4, 5)
    assert recall_at_k(x + 1000.0, y) == recall_at_k(x, y)


def test_recall_accepts_tensors_float64_and_column_labels(rng):
    x, y = _random_case(rng, 50, 4, 5)
    expected = recall_at_k(x, y)
    assert recall_at_k(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)) == expected
    assert recall_at_k(x.astype(np.float64), y[:, None]) == expected
    assert recall_at_k(x.astype(np.float16).astype(np.float32), y, ks=[1]).keys() == {1}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(embeddings=np.zeros(10)), r"rank 2.*shape=\(10,\)"),
        (dict(embeddings=np.zeros((10, 2, 2))), "rank 2"),
        (dict(labels=np.zeros(9)), r"len\(embeddings\)=10, len\(labels\)=9"),
        (dict(labels=np.zeros((10, 2))), "labels.shape"),
        (dict(ks=(0, 1)), ">= 1"),
        (dict(ks=(1, 10)), r"< the number of samples \(10\)"),
        (dict(ks=(1.5,)), "integer"),
        (dict(ks=()), "at least one"),
        (dict(metric="manhattan"), "metric"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(num_threads=0), "num_threads"),
        (dict(embeddings=np.full((10, 2), np.nan)), "NaN"),
        (dict(embeddings=np.zeros((1, 2)), labels=[0]), "at least 2 samples"),
    ],
)
def test_recall_validation(kwargs, match):
    args = dict(embeddings=np.random.rand(10, 2), labels=np.arange(10) % 2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        recall_at_k(**args)


# --------------------------------------------------------------------------- #
# MAP@R
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n,dim,num_classes", [(40, 2, 3), (90, 8, 6), (120, 4, 40)])
def test_map_at_r_matches_brute_force(rng, n, dim, num_classes):
    x, y = _random_case(rng, n, dim, num_classes)
    assert map_at_r(x, y) == pytest.approx(reference_map_at_r(x, y), abs=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 33, 10_000])
def test_map_at_r_chunked_equals_unchunked(rng, chunk_size):
    x, y = _random_case(rng, 75, 5, 6)
    full = map_at_r(x, y, chunk_size=10_000)
    assert map_at_r(x, y, chunk_size=chunk_size) == pytest.approx(full, abs=1e-12)


def test_map_at_r_hand_computed_and_per_query():
    x = np.array([[0.0], [1.0], [3.0], [10.0], [12.0]])
    y = np.array([0, 0, 1, 0, 1])
    # q0: R=2, neighbours 1 (hit), 3 (miss) -> AP = (1/1)/2; q1 likewise 0.5;
    # q2, q3, q4: no hit within R -> 0.
    value, per_query = map_at_r(x, y, return_per_query=True)
    assert value == pytest.approx(0.2)
    np.testing.assert_allclose(per_query, [0.5, 0.5, 0.0, 0.0, 0.0])
    # Perfect clusters -> 1; singletons are left out (NaN per query).
    value, per_query = map_at_r(x, [0, 0, 0, 1, 2], return_per_query=True)
    assert value == 1.0 and np.isnan(per_query[3:]).all()


def test_map_at_r_poor_embeddings_use_partial_sort(rng):
    # Many negatives closer than the positives: exercises the truncation path.
    x, y = _random_case(rng, 100, 2, 2)
    x[y == 1] *= 10
    assert map_at_r(x, y, chunk_size=13) == pytest.approx(reference_map_at_r(x, y), abs=1e-12)


def test_map_at_r_metrics(rng):
    x, y = _random_case(rng, 60, 5, 4)
    for metric in ("cosine", "dot_product"):
        assert map_at_r(x, y, metric=metric) == pytest.approx(
            reference_map_at_r(x, y, metric=metric), abs=1e-12
        )


def test_map_at_r_validation():
    with pytest.raises(ValueError, match="occurs twice"):
        map_at_r(np.random.rand(5, 2), np.arange(5))
    with pytest.raises(ValueError, match="same length"):
        map_at_r(np.random.rand(5, 2), np.arange(4))
    with pytest.raises(ValueError, match="chunk_size"):
        map_at_r(np.random.rand(5, 2), np.zeros(5), chunk_size=-1)


# --------------------------------------------------------------------------- #
# NMI
# --------------------------------------------------------------------------- #
def test_nmi_separated_clusters_and_shuffled_labels(rng):
    y = np.repeat(np.arange(8), 60)
    centers = rng.standard_normal((8, 16)) * 20
    x = centers[y] + rng.standard_normal((y.size, 16))
    assert nmi(x, y) > 0.99
    assert nmi(x, rng.permutation(y)) < 0.1


def test_nmi_geometric_matches_paper_formula(rng):
    from sklearn.cluster import KMeans

    y = rng.choice(3, 300, p=[0.8, 0.15, 0.05])  # unequal entropies
    x = rng.standard_normal((300, 4)) + 1.5 * y[:, None]
    clusters = KMeans(n_clusters=3, n_init="auto", random_state=0).fit_predict(
        x.astype(np.float32)
    )
    joint = np.histogram2d(y, clusters, bins=(3, 3))[0] / y.size
    py, pc = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = (joint[nz] * np.log(joint[nz] / np.outer(py, pc)[nz])).sum()
    entropy = lambda p: -(p[p > 0] * np.log(p[p > 0])).sum()  # noqa: E731
    expected = mutual / np.sqrt(entropy(py) * entropy(pc))
    assert nmi(x, y, seed=0) == pytest.approx(expected, rel=1e-9)
    arithmetic = nmi(x, y, seed=0, average_method="arithmetic")
    assert abs(nmi(x, y, seed=0) - arithmetic) > 1e-3


def test_nmi_validation():
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        nmi(np.random.rand(10, 2), np.zeros(10))
    with pytest.raises(ValueError, match="average_method"):
        nmi(np.random.rand(10, 2), np.arange(10) % 2, average_method="median")


# --------------------------------------------------------------------------- #
# embed
# --------------------------------------------------------------------------- #
def _model(dim_in=4, dim_out=3):
    return keras.Sequential([keras.Input((dim_in,)), keras.layers.Dense(dim_out)])


def test_embed_arrays_datasets_iterables(rng):
    model = _model()
    x = rng.standard_normal((23, 4)).astype(np.float32)
    y = np.arange(23)
    expected = np.asarray(model.predict(x, verbose=0))
    emb = embed(model, x, batch_size=5, verbose=0)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    emb, lab = embed(model, (x, y), batch_size=7, verbose=0)
    np.testing.assert_array_equal(lab, y)
    emb, lab = embed(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(6), verbose=0)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lab, y)
    emb = embed(model, tf.data.Dataset.from_tensor_slices(x).batch(6), verbose=0)
    assert emb.shape == (23, 3)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 23, 10)]
    emb, lab = embed(model, batches, verbose=0)
    np.testing.assert_array_equal(lab, y)
    emb = embed(lambda b: np.asarray(b)[:, :2] * 2, x, verbose=0)
    np.testing.assert_allclose(emb, x[:, :2] * 2)


def test_embed_progress_bar(capsys):
    embed(_model(), np.zeros((8, 4), np.float32), batch_size=4, verbose=1)
    assert "2/2" in capsys.readouterr().out


def test_embed_errors():
    model = _model()
    infinite = tf.data.Dataset.from_tensor_slices(np.zeros((4, 4), np.float32)).batch(2).repeat()
    with pytest.raises(ValueError, match="infinite"):
        embed(model, infinite, verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        embed(model, np.zeros((4, 4)), batch_size=0)
    with pytest.raises(ValueError, match="model"):
        embed("not a model", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="`data` must be"):
        embed(model, 3)


# --------------------------------------------------------------------------- #
# evaluate_retrieval and the callback
# --------------------------------------------------------------------------- #
def test_evaluate_retrieval_keys(rng):
    x, y = _random_case(rng, 40, 3, 4)
    out = evaluate_retrieval(x, y, ks=(1, 2), prefix="test_")
    assert list(out) == ["test_recall@1", "test_recall@2", "test_nmi", "test_map@r"]
    assert out["test_recall@1"] == recall_at_k(x, y, ks=1)[1]


def _fit_data(rng):
    y = np.arange(60) % 3
    x = (rng.standard_normal((60, 4)) + 3 * y[:, None]).astype(np.float32)
    return x, y


def test_callback_metrics_reach_history_and_later_callbacks(rng):
    x, y = _fit_data(rng)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    seen = []
    later = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(dict(logs)))
    cb = RetrievalEvaluation(x, y, ks=(1, 2))
    history = model.fit(x, np.zeros((60, 3)), epochs=2, batch_size=20, verbose=0,
                        callbacks=[cb, later])
    for key in ("val_recall@1", "val_recall@2", "val_nmi", "val_map@r"):
        assert len(history.history[key]) == 2, key
        assert 0.0 <= history.history[key][-1] <= 1.0
        assert key in seen[-1]
    emb = np.asarray(model.predict(x, verbose=0))
    assert history.history["val_recall@1"][-1] == recall_at_k(emb, y, ks=1)[1]
    assert set(cb.results) == {0, 1}


def test_callback_every_and_dataset_input(rng):
    x, y = _fit_data(rng)
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    cb = RetrievalEvaluation(data, ks=1, every=2, nmi=False, map_at_r=False, prefix="test_")
    history = model.fit(x, np.zeros((60, 3)), epochs=3, verbose=0, callbacks=[cb])
    # Epoch 2 (every=2) and the last epoch 3.
    assert sorted(cb.results) == [1, 2]
    assert len(history.history["test_recall@1"]) == 2
    assert "test_nmi" not in history.history


def test_callback_embedding_model_and_validation(rng):
    x, y = _fit_data(rng)
    inputs = keras.Input((4,))
    features = keras.layers.Dense(5, name="embedding")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(features))
    model.compile(optimizer="sgd", loss="mse")
    cb = RetrievalEvaluation(x, y, ks=1, nmi=False, map_at_r=False,
                             embedding_model=keras.Model(inputs, features))
    model.fit(x, np.zeros((60, 3)), epochs=1, verbose=0, callbacks=[cb])
    assert 0.0 <= cb.results[0]["val_recall@1"] <= 1.0
    with pytest.raises(ValueError, match="every"):
        RetrievalEvaluation(x, y, every=0)
    with pytest.raises(ValueError, match="`y` must be None"):
        RetrievalEvaluation(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), y)
    with pytest.raises(ValueError, match="len\\(y\\)"):
        RetrievalEvaluation(x, y[:-1])
    with pytest.raises(ValueError, match="metric"):
        RetrievalEvaluation(x, y, metric="l1")
    with pytest.raises(ValueError, match="ks"):
        RetrievalEvaluation(x, y, ks=(0,))
    unlabeled = RetrievalEvaluation(x)
    unlabeled.set_model(model)
    with pytest.raises(ValueError, match="needs labels"):
        unlabeled.evaluate()
