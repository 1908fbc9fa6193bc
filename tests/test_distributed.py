"""Global-batch statistics and ranking losses under data parallelism.

Regularizers, VICRegLoss and the ranking losses (TripletLoss, ContrastiveLoss, NPairLoss,
AngularLoss) with ``cross_replica=True``; a real multi-worker run is in
tests/test_multiworker.py, the user-facing notes in docs/guides/multi-worker.md.

The checks run in child processes (tests/distributed_worker.py) because the devices must be
configured before TensorFlow/JAX initialize them: two logical CPU devices under
``tf.distribute.MirroredStrategy``, and two XLA host devices under
``keras.distribution.DataParallel``.  Both children start together (they are mostly
single-threaded tracing/compilation, so they overlap on 2 cores).  The worker reports the
largest absolute difference to the single-device result on the same global batch of 48
rows (24 per replica, below the embedding dimension 32).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-5
REGULARIZERS = ["svmax", "vicreg", "spreadout"]
_PROCESSES = {}


def _start(mode):
    if mode not in _PROCESSES:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        env.pop("KERAS_BACKEND", None)  # the worker sets it for its mode
        _PROCESSES[mode] = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "distributed_worker.py"), mode],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=HERE)
    return _PROCESSES[mode]


def _results(mode):
    process = _start(mode)
    if not hasattr(process, "results"):
        output, _ = process.communicate(timeout=600)
        lines = [line for line in output.splitlines() if line.startswith("RESULTS ")]
        assert process.returncode == 0 and lines, output[-5000:]
        process.results = json.loads(lines[-1][len("RESULTS "):])
    return process.results


@pytest.fixture(scope="module")
def tf_results():
    if keras.backend.backend() == "tensorflow":
        _start("jax")  # runs alongside
    return _results("tf")


@pytest.fixture(scope="module")
def jax_results():
    return _results("jax")


def _assert_grad(results, key, name):
    err, scale = results[key], results.get(f"grad_scale/{name}", 1.0)
    assert err <= TOL, (key, err)
    assert err <= 1e-4 * max(scale, 1e-12) or err <= 1e-9, (key, err, scale)


# ---- TensorFlow: MirroredStrategy, 2 logical CPU devices ---------------------------------

@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", REGULARIZERS + ["vicreg_loss"])
def test_tf_gathered_value_and_gradient_equal_single_device(tf_results, name):
    # Every replica holds the global value; the gradient of its loss (value / replicas, as
    # Keras scales it) w.r.t. its own rows, concatenated, is the single-device gradient.
    assert tf_results[f"value/{name}"] <= TOL
    _assert_grad(tf_results, f"grad/{name}", name)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", REGULARIZERS)
def test_tf_without_option_each_replica_regularizes_its_slice(tf_results, name):
    # Replica r returns penalty(X_r); the gradient of its scaled loss is the gradient of
    # mean_r penalty(X_r).  That differs from the global penalty in this regime.
    assert tf_results[f"local_value/{name}"] <= TOL
    _assert_grad(tf_results, f"local_grad/{name}", name)
    assert tf_results[f"local_vs_global/{name}"] > 1e-4


@pytest.mark.tensorflow_only
def test_tf_evaluate_equals_single_device(tf_results):
    # SVMax (activity_regularizer), VICReg (EmbeddingRegularization) and SpreadOut
    # (activity_regularizer): three all-gathers in the forward pass, no add_loss trap.
    assert tf_results["single/loss_vs_formula"] <= TOL
    assert tf_results["evaluate/model"] <= TOL


@pytest.mark.tensorflow_only
def test_tf_one_fit_step_equals_single_device(tf_results):
    assert tf_results["fit_step/model_moved"] > 1e-3
    assert tf_results["fit_step/model"] <= TOL


@pytest.mark.tensorflow_only
def test_tf_vicreg_loss_compiled_equals_single_device(tf_results):
    assert tf_results["evaluate/vicreg_loss"] <= TOL
    assert tf_results["fit_step/vicreg_loss"] <= TOL


@pytest.mark.tensorflow_only
def test_tf_fit_trains(tf_results):
    losses = np.asarray(tf_results["train/loss"])
    assert np.all(np.isfinite(losses))
    assert np.all(np.diff(losses) < 0), losses


@pytest.mark.tensorflow_only
def test_tf_without_option_loss_is_mean_of_slice_penalties(tf_results):
    # evaluate = MSE + mean over replicas of each slice's penalties (float64 formula).
    assert tf_results["local_evaluate/model"] <= TOL
    assert tf_results["local_evaluate/global_gap"] > 1e-3


# ---- Ranking losses with cross_replica=True (TripletLoss, ContrastiveLoss, NPairLoss,
# AngularLoss): labels and embeddings gathered, mining over the global batch of 48 rows
# (12 classes x 4, shuffled: some classes are missing or single on a replica).

RANKING = ["triplet", "triplet_hard", "contrastive", "npair", "angular"]
FIT_TOL = 1e-6


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", RANKING)
def test_tf_ranking_loss_gathered_value_and_gradient_equal_single_device(tf_results, name):
    # Each replica returns global loss / replicas; d(returned loss)/d(own rows), concatenated
    # over replicas, is the single-device gradient on the global batch.
    assert tf_results[f"ranking/value/{name}"] <= TOL
    _assert_grad(tf_results, f"ranking/grad/{name}", f"ranking/{name}")
    # Without the option each replica mines its own slice: a different loss.
    assert tf_results[f"ranking/local_value/{name}"] <= TOL
    assert tf_results[f"ranking/local_vs_global/{name}"] > 1e-3


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", ["triplet", "contrastive", "npair", "angular"])
def test_tf_ranking_loss_fit_step_equals_single_device(tf_results, name):
    # model.fit on 2 replicas (SVMax(cross_replica=True) attached, the loss compiled with
    # cross_replica=True) vs one device on the global batch: the reported loss and the
    # weights after one SGD step.
    assert tf_results[f"ranking/fit_moved/{name}"] > 1e-3
    assert tf_results[f"ranking/fit_loss/{name}"] <= FIT_TOL
    assert tf_results[f"ranking/fit_step/{name}"] <= FIT_TOL


@pytest.mark.tensorflow_only
def test_tf_ranking_loss_without_option_differs_in_fit(tf_results):
    assert tf_results["ranking/fit_local_gap/triplet"] > 1e-3


# ---- JAX: keras.distribution.DataParallel, 2 host devices (any backend runs this) -------

def test_jax_data_parallel_statistics_are_global(jax_results):
    r = jax_results
    assert r["jax/devices"] == 2 and r["jax/shard_rows"] == 24
    for name in REGULARIZERS + ["vicreg_loss"]:
        assert r[f"jax/value/{name}"] <= TOL, name
        assert r[f"jax/grad/{name}"] <= TOL, name
    assert r["jax/gather_is_identity"]  # cross_replica=True is a no-op on JAX
    # Inside the jitted step the activations are one batch-sharded array; the loss is the
    # global-batch formula, not the mean of per-device slices (which differs by the gap).
    assert r["jax/hidden_layouts"] == ["P('batch',)"]
    assert r["jax/single/loss_vs_formula"] <= TOL
    assert r["jax/global_vs_per_replica_gap"] > 1e-3
    assert r["jax/evaluate/model"] <= TOL
    assert r["jax/fit_step/model"] <= TOL


def test_jax_data_parallel_ranking_losses_are_global(jax_results):
    # A batch-sharded array is the global batch: mining sees all rows, cross_replica=True is
    # a no-op, and one DataParallel fit step (TripletLoss + SVMax, both cross_replica=True)
    # equals one single-device step.
    r = jax_results
    for name in RANKING:
        assert r[f"jax/value/ranking/{name}"] <= TOL, name
        assert r[f"jax/grad/ranking/{name}"] <= TOL, name
    assert r["jax/ranking/fit_moved"] > 1e-3
    assert r["jax/ranking/fit_loss"] <= FIT_TOL
    assert r["jax/ranking/fit_step"] <= FIT_TOL
