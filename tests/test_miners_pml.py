"""The miners ported from pytorch-metric-learning 2.9, against PML's own selections.

``tests/fixtures/pml_miners.npz`` (``tools/make_pml_miner_fixtures.py``) holds, per case,
the matrix PML mined on (float64), PML's index tuples, and for most cases PML's loss value
and gradient through the miner. Checks:

* selection: our miner on PML's very matrix selects the same pairs / triplets (masks
  compared as sets; for HDC modulo pairs tied in value at the cut-off); for the two
  sampling miners, the distribution instead of the draws: DistanceWeightedMiner's
  weights against PML's, UniformHistogramMiner's bins against PML's, then our samplers
  statistically;
* loss: our loss with our miner, from the float32 embeddings, against PML's float64
  value and gradient (TripletMarginLoss -> TripletLoss, ContrastiveLoss(SumReducer) ->
  ContrastiveLoss(reducer="sum"), MultiSimilarityLoss -> MultiSimilarityLoss);
* compiled (XLA / jax.jit) masks equal the eager ones, the seeded draws included.
"""

import contextlib
import json
import os

import keras
import numpy as np
import pytest
from _helpers import jit, to_np, value_and_grad

from keras_featreg import distances, losses, miners
from keras_featreg.miners import _sampling

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pml_miners.npz")
PML = np.load(FIXTURES)
CASES = {c["name"]: c for c in json.loads(str(PML["manifest"]))["cases"]}
BACKEND = keras.backend.backend()


def _on_this_backend(names, keep=()):
    """All of `names`; on JAX only the 4 x 3 layout (and `keep`). JAX compiles every op
    anew for each new shape and configuration (~2 s per case on the CI machine, several
    minutes for all); the miners are the same ``keras.ops`` code on every backend, run
    on every case under TensorFlow and torch, and on JAX on one layout per miner and
    configuration."""
    if BACKEND != "jax":
        return sorted(names)
    return sorted(n for n in names if "p4xl3" in n or n in keep)


LOSS_CASES = _on_this_backend([n for n in CASES if f"{n}/value" in PML.files])

# float32 loss tolerances. The losses here are sums / means of hinge terms of distances
# of unit (or 1.7x unit) vectors, computed by PML in float64 from the same float32 inputs:
# our float32 distances differ by a few ulps (~1e-7 relative). Measured over the 49 loss
# cases (TensorFlow): value error <= 1.3e-6 absolute on contrastive sums of up to ~15
# (<= 1e-7 relative), gradient error <= 4.6e-7 absolute (|grad| <= ~2). Bounds: rtol
# 5e-6 (+ atol 1e-6) on values, 2e-5 * max(1, max|grad|) on gradients.
VALUE_RTOL, VALUE_ATOL = 5e-6, 1e-6
GRAD_SCALED_ATOL = 2e-5


def _miner_of(spec, **extra):
    return getattr(miners, spec["class"])(**{**spec["kwargs"], **extra})


@contextlib.contextmanager
def _float64():
    """float64 computation on JAX (x64); TensorFlow and torch take float64 as given."""
    if BACKEND == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def _as_set(rows):
    rows = np.asarray(rows)
    return {tuple(int(v) for v in np.atleast_1d(r)) for r in rows}


def _mine(name, **extra):
    case = CASES[name]
    miner = _miner_of(case["ours"], **extra)
    with _float64():
        mined = miner(PML[f"{name}/matrix"], PML[f"{name}/labels"],
                      distance=case["ours"]["distance"])
        return miner, [to_np(t) if not isinstance(t, bool) else t for t in mined]


def _by_miner(prefix, everywhere=False):
    names = [n for n in CASES if n.startswith(prefix)]
    return sorted(names) if everywhere else _on_this_backend(names)


def test_fixtures_cover_every_miner_with_degenerate_batches():
    for prefix in ("triplet_margin", "batch_easy_hard", "angular", "hdc",
                   "distance_weighted", "uniform_histogram"):
        names = _by_miner(prefix, everywhere=True)
        assert len(names) >= 10, prefix
        for layout in ("one_class", "no_positives", "duplicates", "b2"):
            assert any(layout in n for n in names), (prefix, layout)
        assert any(f"{n}/value" in PML.files for n in names), prefix


# ----------------------------------------------------------------- selections


@pytest.mark.parametrize("prefix", ["triplet_margin", "angular"])
def test_triplet_miners_select_pmls_triplets(prefix):
    for name in _by_miner(prefix):
        _, (_, _, mask, active) = _mine(name)
        assert active is True
        ours = _as_set(np.argwhere(mask))
        want = _as_set(PML[f"{name}/triplets"])
        if name.endswith("_collapsed"):  # documented: PML's eps angle, ours none
            assert ours == set() and len(want) == 12, name
            continue
        if prefix == "angular":  # PML's eps: coinciding a, p, n with n the center
            matrix = PML[f"{name}/matrix"]
            extra = {t for t in want - ours if matrix[t[0], t[1]] == 0 == matrix[t[0], t[2]]}
            assert extra == set() or name.endswith("duplicates"), name
            want -= extra
        assert ours == want, name


def test_batch_easy_hard_selects_pmls_pairs():
    for name in _by_miner("batch_easy_hard"):
        _, (positive, negative) = _mine(name, output="pairs")
        assert _as_set(np.argwhere(positive)) == _as_set(PML[f"{name}/pos_pairs"]), name
        assert _as_set(np.argwhere(negative)) == _as_set(PML[f"{name}/neg_pairs"]), name


def _same_modulo_ties(mask, want_pairs, matrix, name):
    """The same number of pairs, the same values; differing pairs only tied in value."""
    ours = _as_set(np.argwhere(mask))
    want = _as_set(want_pairs)
    assert len(ours) == len(want), name
    np.testing.assert_array_equal(sorted(matrix[p] for p in ours),
                                  sorted(matrix[p] for p in want), err_msg=name)
    return len(ours ^ want)


def test_hdc_selects_pmls_pairs_up_to_ties():
    swapped = 0
    for name in _by_miner("hdc"):
        _, (positive, negative) = _mine(name)
        matrix = PML[f"{name}/matrix"]
        swapped += _same_modulo_ties(positive, PML[f"{name}/pos_pairs"], matrix, name)
        swapped += _same_modulo_ties(negative, PML[f"{name}/neg_pairs"], matrix, name)
    if BACKEND != "jax":  # (JAX runs a subset, see _on_this_backend)
        assert swapped > 0  # the fixtures do exercise ties at the cut-off


def test_distance_weighted_weights_are_pmls():
    for name in _by_miner("distance_weighted"):
        case = CASES[name]
        miner = _miner_of(case["ours"])
        with _float64():
            got = to_np(miner.weights(PML[f"{name}/matrix"], PML[f"{name}/labels"]))
        want = PML[f"{name}/weights"]
        # Row-normalized exponentials of the same log weights, shifted by a different
        # constant (PML: the batch maximum; ours: the row's): float64 rounding only
        # (measured <= 2.3e-15 relative). Keras's torch backend computes float64 input in
        # float32: log w = (2 - n) log d + ... multiplies d's rounding (6e-8) by up to
        # n = 32 (measured <= 2.2e-6 relative), bound 2e-5.
        rtol = 1e-12 if got.dtype == np.float64 else 2e-5
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3, err_msg=name)


def test_distance_weighted_triplets_draw_eligible_negatives():
    for name in _by_miner("distance_weighted"):
        _, (dap, dan, mask, _) = _mine(name, seed=3)
        matrix, labels = PML[f"{name}/matrix"], PML[f"{name}/labels"]
        weights = PML[f"{name}/weights"]
        positive = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
        has = weights.sum(axis=1) > 0
        np.testing.assert_array_equal(mask, positive & has[:, None], err_msg=name)
        for a, p in np.argwhere(mask):  # the drawn negative: one of weight > 0
            assert np.isclose(dap[a, p], matrix[a, p])
            candidates = np.flatnonzero(weights[a] > 0)
            assert np.min(np.abs(matrix[a, candidates] - dan[a, p])) == 0, name


def test_uniform_histogram_bins_are_pmls_and_each_bin_keeps_its_quota():
    for name in _by_miner("uniform_histogram"):
        case = CASES[name]
        kwargs = case["ours"]["kwargs"]
        matrix, labels = PML[f"{name}/matrix"], PML[f"{name}/labels"]
        positive = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
        _, (pos, neg) = _mine(name, seed=5)
        for key, candidates, chosen, quota in (
                ("pos_bins", positive, pos, kwargs["pos_per_bin"]),
                ("neg_bins", ~(labels[:, None] == labels[None]), neg, kwargs["neg_per_bin"])):
            with _float64():
                bins = to_np(miners.histogram_bins(matrix, candidates, kwargs["num_bins"]))
            want = PML[f"{name}/{key}"]
            np.testing.assert_array_equal(np.where(candidates, bins, -1), want, err_msg=name)
            assert not (chosen & ~candidates).any()
            for b in np.unique(want[want >= 0]):
                in_bin = want == b
                assert chosen[in_bin].sum() == min(quota, in_bin.sum()), (name, key, b)


# ------------------------------------------------------------------- samplers


def test_sample_rows_follows_the_weights():
    """20 000 draws per row: each frequency within 5 standard errors of its probability."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(size=(4, 9)) * (rng.uniform(size=(4, 9)) > 0.3)
    weights[:, 4] = 0.0  # never drawn
    probs = weights / weights.sum(axis=1, keepdims=True)
    n = 20000
    draws = to_np(miners.sample_rows(weights.astype("float32"), n, seed=7))
    assert draws.shape == (4, n) and draws.min() >= 0 and draws.max() < 9
    freq = np.stack([np.bincount(row, minlength=9) / n for row in draws])
    sigma = np.sqrt(probs * (1 - probs) / n)
    assert (freq[probs == 0] == 0).all()
    np.testing.assert_array_less(np.abs(freq - probs), 5 * sigma + 1e-12)


def test_uniform_histogram_draws_uniformly_within_a_bin():
    """A bin of 12 pairs keeping 3: each pair kept with probability 1/4 (400 draws:
    standard error 0.022, bound 5 of them)."""
    values = np.linspace(0.0, 1.0, 12, dtype="float32")[None]
    candidates = np.ones_like(values, dtype=bool)
    draws = 400
    if BACKEND == "jax":
        import jax

        fn = jax.jit(lambda key: _sampling._uniform_per_bin(values, candidates, 1, 3, key))
        kept = [to_np(fn(jax.numpy.array([0, i], "uint32"))) for i in range(draws)]
    else:
        generator = keras.random.SeedGenerator(11)
        fn = lambda: _sampling._uniform_per_bin(values, candidates, 1, 3, generator)  # noqa: E731
        if BACKEND == "tensorflow":
            import tensorflow as tf

            fn = tf.function(fn)  # one graph; the generator's state advances every call
        kept = [to_np(fn()) for _ in range(draws)]
    kept = np.concatenate(kept)
    assert (kept.sum(axis=1) == 3).all()
    np.testing.assert_array_less(np.abs(kept.mean(axis=0) - 0.25), 5 * np.sqrt(0.25 * 0.75 / draws))


# ----------------------------------------------------------------------- losses


def _loss_of(case):
    spec = case["loss"]["ours"]
    miner = _miner_of(case["ours"], **({"seed": 0} if "seed" in getattr(
        miners, case["ours"]["class"]).__init__.__code__.co_varnames else {}))
    kwargs = dict(spec["kwargs"])
    if spec["class"] == "TripletLoss":
        if case["ours"]["class"] == "BatchEasyHardMiner":
            miner = _miner_of(case["ours"], output="triplets")
        return losses.TripletLoss(**kwargs, miner=miner)
    return getattr(losses, spec["class"])(**kwargs, miner=miner)


@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_through_the_miner_matches_pml(name):
    case = CASES[name]
    labels, x = PML[f"{name}/labels"], PML[f"{name}/embeddings"]
    loss = _loss_of(case)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    want_value, want_grad = PML[f"{name}/value"], PML[f"{name}/grad"]
    np.testing.assert_allclose(value, want_value, rtol=VALUE_RTOL, atol=VALUE_ATOL)
    scale = max(1.0, float(np.abs(want_grad).max()))
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=GRAD_SCALED_ATOL * scale)


def test_nonfinite_embeddings_give_nan_through_every_miner():
    name = "triplet_margin_all_m0.2_p4xl3"  # b = 12, d = 8: shapes JAX has compiled
    labels, x = PML[f"{name}/labels"], PML[f"{name}/embeddings"].copy()
    x[2, 1] = np.nan
    every = (losses.TripletLoss(miner=miners.TripletMarginMiner()),
             losses.TripletLoss(miner=miners.AngularMiner()),
             losses.TripletLoss(miner=miners.DistanceWeightedMiner(embedding_size=8, seed=0)),
             losses.TripletLoss(miner=miners.BatchEasyHardMiner(output="triplets")),
             losses.ContrastiveLoss(miner=miners.BatchEasyHardMiner()),
             losses.ContrastiveLoss(miner=miners.HDCMiner()),
             losses.ContrastiveLoss(miner=miners.UniformHistogramMiner(seed=0)))
    # JAX: three of them (op-by-op JAX compiles each loss's ops; ~1.5 s per loss).
    for loss in every[::3] if BACKEND == "jax" else every:
        assert np.isnan(float(to_np(loss(labels, x)))), loss.miner


# -------------------------------------------------------------------- compiled


COMPILED = [
    miners.TripletMarginMiner(0.3, "semihard"), miners.AngularMiner(30),
    miners.BatchEasyHardMiner("hard", "semihard"),
    miners.BatchEasyHardMiner("all", "easy", output="triplets"),
    miners.HDCMiner(0.3), miners.DistanceWeightedMiner(embedding_size=8, seed=4),
    miners.UniformHistogramMiner(5, 2, 3, seed=4),
]


@pytest.mark.parametrize("miner", COMPILED, ids=lambda m: type(m).__name__)
def test_compiled_miner_gives_the_eager_selection(miner):
    """XLA (tf.function(jit_compile=True) / jax.jit) gives the eager masks. The seeded
    draws too on JAX; TensorFlow's stateless RNG uses another algorithm under XLA
    (ThreeFry, Philox without), so there the draws are compared in a graph without XLA
    and the XLA ones only for what does not depend on them."""
    name = "triplet_margin_all_m0.2_p4xl3"
    matrix = PML[f"{name}/matrix"].astype("float32")
    labels = PML[f"{name}/labels"]
    fn = lambda m, y: tuple(  # noqa: E731
        keras.ops.convert_to_tensor(t) for t in miner(m, y) if not isinstance(t, bool))
    compiled = jit(fn)
    random = isinstance(miner, _sampling._RandomMiner)
    fresh = miners.get(keras.saving.serialize_keras_object(miner))  # same seed, fresh state
    eager = [to_np(t) for t in fresh(matrix, labels) if not isinstance(t, bool)]
    got = [to_np(t) for t in compiled(matrix, labels)]
    if random and BACKEND == "tensorflow":
        import tensorflow as tf

        assert [g.shape for g in got] == [e.shape for e in eager]
        if isinstance(miner, miners.DistanceWeightedMiner):
            np.testing.assert_array_equal(got[2], eager[2])  # the mask
        else:
            assert [g.sum() for g in got] == [e.sum() for e in eager]  # the bin quotas
        again = miners.get(keras.saving.serialize_keras_object(miner))
        got = [to_np(t) for t in tf.function(
            lambda m, y: tuple(t for t in again(m, y) if not isinstance(t, bool)))(matrix, labels)]
    for g, e in zip(got, eager):
        np.testing.assert_array_equal(g, e)


# ---------------------------------------------------------------- API / errors


def test_names_configs_and_errors():
    for name in ("triplet_margin", "batch_easy_hard", "distance_weighted", "angular", "hdc",
                 "uniform_histogram"):
        miner = miners.get(name)
        assert miners.name_of(miner) == name and name in miners.NAMES
        again = miners.get(keras.saving.serialize_keras_object(miner))
        assert again == miner
    configured = miners.BatchEasyHardMiner("hard", "all", allowed_pos_range=(0.1, 0.9))
    assert miners.get(keras.saving.serialize_keras_object(configured)) == configured
    with pytest.raises(ValueError, match="both be 'semihard'"):
        miners.BatchEasyHardMiner("semihard", "semihard")
    with pytest.raises(ValueError, match="cannot be combined with 'all'"):
        miners.BatchEasyHardMiner("all", "semihard")
    with pytest.raises(ValueError, match="Received: allowed_neg_range=\\(1, 0\\)"):
        miners.BatchEasyHardMiner(allowed_neg_range=(1, 0))
    with pytest.raises(ValueError, match="Received: type_of_triplets='semi_hard'"):
        miners.TripletMarginMiner(type_of_triplets="semi_hard")
    with pytest.raises(ValueError, match="`filter_percentage`"):
        miners.HDCMiner(0.0)
    with pytest.raises(ValueError, match="`seed`"):
        miners.UniformHistogramMiner(seed=-1)
    d = np.ones((4, 4), "float32")
    with pytest.raises(ValueError, match="embedding_size=None"):
        miners.DistanceWeightedMiner()(d, np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="against itself"):
        miners.AngularMiner()(np.ones((4, 6), "float32"), np.array([0, 0, 1, 1]),
                              ref_labels=np.array([0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match="Euclidean geometry"):
        miners.AngularMiner()(d, np.array([0, 0, 1, 1]), distance=_SNR())
    # The pair miners refuse TripletLoss, the triplet ones ContrastiveLoss.
    with pytest.raises(ValueError, match="triplet miner"):
        losses.TripletLoss(miner="hdc")
    with pytest.raises(ValueError, match="pair miner"):
        losses.ContrastiveLoss(miner="angular")


class _SNR(distances.Distance):
    name = "not_euclidean"


def test_pml_semihard_is_not_facenets_semi_hard():
    """PML keeps every negative in (d_ap, d_ap + m]; FaceNet one per positive pair, the
    closest farther one, whatever the margin."""
    d = np.array([[0.0, 1.0, 1.1, 1.15, 3.0],
                  [1.0, 0.0, 3.0, 3.0, 3.0],
                  [1.1, 3.0, 0.0, 0.1, 0.2],
                  [1.15, 3.0, 0.1, 0.0, 0.2],
                  [3.0, 3.0, 0.2, 0.2, 0.0]], "float32")
    labels = np.array([0, 0, 1, 1, 1])
    pml = to_np(miners.TripletMarginMiner(0.2, "semihard")(d, labels).mask)
    assert _as_set(np.argwhere(pml[0, 1])) == {(2,), (3,)}  # both in (1.0, 1.2]
    facenet = miners.SemiHardMiner()(d, labels)
    assert float(to_np(facenet.negative_distances)[0, 1]) == pytest.approx(1.1)  # one: 2
