"""Distributed checks, run in a child process by tests/test_distributed.py; prints JSON.

    python tests/distributed_worker.py tf    # MirroredStrategy over 2 logical CPU devices
    python tests/distributed_worker.py jax   # keras.distribution.DataParallel, 2 host devices

Device setup must precede the framework's device initialization (TF logical devices,
XLA_FLAGS for JAX), hence a separate process.  Each check reports the largest absolute
difference between the distributed result and the single-device result on the same global
batch; the test file holds the tolerances.  The global batch (48 rows, 24 per replica) is
smaller per replica than the embedding dimension (32), the regime where gathering matters.
"""

import contextlib
import json
import os
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "tf"
REPLICAS, BATCH, D_IN, DIM = 2, 48, 16, 32
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "jax" if MODE == "jax" else "tensorflow"
if MODE == "jax":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={REPLICAS}")
    os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if MODE == "tf":
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_featreg import backend as kf_backend  # noqa: E402
from keras_featreg.layers import EmbeddingRegularization  # noqa: E402
from keras_featreg import losses as lr  # noqa: E402
from keras_featreg.losses import VICRegLoss  # noqa: E402
from keras_featreg.regularizers import SVMax, SpreadOut, VICReg  # noqa: E402

from _references import ref_covariance, ref_spread_out, ref_svmax, ref_variance  # noqa: E402

RESULTS = {}
RNG = np.random.default_rng(7)
X = RNG.standard_normal((BATCH, DIM)).astype("float32")
X2 = (X + 0.3 * RNG.standard_normal((BATCH, DIM))).astype("float32")
INPUTS = RNG.standard_normal((BATCH, D_IN)).astype("float32")
TARGETS = RNG.standard_normal((BATCH, DIM)).astype("float32")
# Ranking losses: unit-norm embeddings, 12 classes x 4 samples shuffled over the global batch
# (some classes have a single sample, or none, on a replica: local mining differs).
UNIT = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype("float32")
LABELS = RNG.permutation(np.repeat(np.arange(12), 4)).astype("int32")


def ranking_losses(cross_replica):
    return {
        "triplet": lr.TripletLoss(mining="semi_hard", cross_replica=cross_replica),
        "triplet_hard": lr.TripletLoss(mining="hard", cross_replica=cross_replica),
        "contrastive": lr.ContrastiveLoss(cross_replica=cross_replica),
        "npair": lr.NPairLoss(l2_reg=0.002, cross_replica=cross_replica),
        "angular": lr.AngularLoss(cross_replica=cross_replica),
    }


def regularizers(cross_replica):
    return {
        "svmax": SVMax(1.0, cross_replica=cross_replica),
        "vicreg": VICReg(25.0, 1.0, cross_replica=cross_replica),
        "spreadout": SpreadOut(1.0, cross_replica=cross_replica),
    }


def maxdiff(a, b):
    a = [np.asarray(v, np.float64) for v in (a if isinstance(a, (list, tuple)) else [a])]
    b = [np.asarray(v, np.float64) for v in (b if isinstance(b, (list, tuple)) else [b])]
    return float(max(np.max(np.abs(u - v)) for u, v in zip(a, b)))


def build_model(cross_replica, seed=3):
    """SVMax as activity regularizer, VICReg through EmbeddingRegularization, SpreadOut on
    the output: both attachment paths, three gathers per forward pass."""
    regs = regularizers(cross_replica)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D_IN,))
    hidden = keras.layers.Dense(DIM, activation="tanh", activity_regularizer=regs["svmax"],
                                name="hidden")(inputs)
    hidden = EmbeddingRegularization(regs["vicreg"], name="vicreg_reg")(hidden)
    out = keras.layers.Dense(DIM, activity_regularizer=regs["spreadout"], name="out")(hidden)
    return keras.Model(inputs, out)


def model_reference(weights, x, y):
    """The model's single-device loss in float64 numpy (formulas from tests/_helpers.py):
    on the global batch, and with each replica's slice regularized on its own."""
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in weights)
    hidden = np.tanh(x @ w1 + b1)
    out = hidden @ w2 + b2

    def penalties(rows):
        h = hidden[rows]
        return (ref_svmax(h) + 25.0 * ref_variance(h) + ref_covariance(h)
                + ref_spread_out(out[rows]))

    mse = float(np.mean((out - y) ** 2))
    share = BATCH // REPLICAS
    slices = [slice(r * share, (r + 1) * share) for r in range(REPLICAS)]
    return {"global": mse + penalties(slice(None)),
            "per_replica_mean": mse + float(np.mean([penalties(s) for s in slices]))}


def embedding_model(seed=13):
    """Dense -> tanh (SVMax(cross_replica=True) activity regularizer) -> Dense -> unit norm."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D_IN,))
    hidden = keras.layers.Dense(DIM, activation="tanh", name="hidden",
                                activity_regularizer=SVMax(0.5, cross_replica=True))(inputs)
    out = keras.layers.UnitNormalization()(keras.layers.Dense(DIM, name="out")(hidden))
    return keras.Model(inputs, out)


def ranking_fit_step(loss, weights, scope=None):
    """One SGD step of `embedding_model` on the global batch: (reported loss, new weights)."""
    with scope or contextlib.nullcontext():
        model = embedding_model()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    history = model.fit(INPUTS, LABELS, batch_size=BATCH, shuffle=False, verbose=0)
    return history.history["loss"][0], model.get_weights()


def fit_one_step(model, weights, x, y, loss="mse"):
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


# ---- TensorFlow: MirroredStrategy over two logical CPU devices ------------------------

def single_device_run(cross_replica):
    """One device: initial weights, float64 formula references, one fit step's loss and weights."""
    single_model = build_model(cross_replica)
    weights = single_model.get_weights()
    refs = model_reference(weights, INPUTS.astype(np.float64), TARGETS.astype(np.float64))
    single_model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    single_loss = single_model.fit(INPUTS, TARGETS, batch_size=BATCH, shuffle=False,
                                   verbose=0).history["loss"][0]
    return weights, refs, single_loss, single_model.get_weights()


_STRATEGY = []


def mirrored_strategy():
    """One MirroredStrategy per process: a second one would reuse the first one's collective
    instance keys, which TensorFlow's collective executor has already bound to other shapes."""
    if not _STRATEGY:
        _STRATEGY.append(tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)]))
    return _STRATEGY[0]


def tf_checks():
    strategy = mirrored_strategy()
    share = BATCH // REPLICAS
    slices = [slice(r * share, (r + 1) * share) for r in range(REPLICAS)]
    gathered, local = regularizers(True), regularizers(False)
    loss_fn = VICRegLoss(cross_replica=True)

    # 1. value and input gradient of every penalty, all in one strategy.run.  Each replica's
    # loss is value / replicas, as Keras scales every replica's loss (VICRegLoss does it
    # itself, like any Keras loss); its gradient w.r.t. the replica's rows is reported.
    def replica_fn(x, x2):
        values, grads = {}, {}
        for tag, regs in (("", gathered), ("local_", local)):
            for name, reg in regs.items():
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    value = reg.penalty(x)
                    loss = kf_backend.scale_loss_for_replicas(value)
                values[tag + name], grads[tag + name] = value, tape.gradient(loss, x)
        with tf.GradientTape() as tape:
            tape.watch([x, x2])
            loss = loss_fn(x, x2)
        values["vicreg_loss"] = loss * REPLICAS
        grads["vicreg_loss"] = tf.concat(tape.gradient(loss, [x, x2]), axis=1)
        return values, grads

    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: (tf.constant(X[slices[ctx.replica_id_in_sync_group]]),
                     tf.constant(X2[slices[ctx.replica_id_in_sync_group]])))
    values, grads = tf.function(lambda *a: strategy.run(replica_fn, args=a))(*dist)
    values = {k: [float(v) for v in strategy.experimental_local_results(t)]
              for k, t in values.items()}
    grads = {k: np.concatenate([np.asarray(g) for g in strategy.experimental_local_results(t)])
             for k, t in grads.items()}

    def single(fn, *arrays):
        xs = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = fn(*xs)
        return float(value), np.concatenate([np.asarray(g) for g in tape.gradient(value, xs)], 1)

    for name in gathered:
        ref_value, ref_grad = single(local[name].penalty, X)
        RESULTS[f"value/{name}"] = maxdiff(values[name], [ref_value] * REPLICAS)
        RESULTS[f"grad/{name}"] = maxdiff(grads[name], ref_grad)
        RESULTS[f"grad_scale/{name}"] = float(np.max(np.abs(ref_grad)))
        # Without the option: replica r holds the penalty of its own slice; the gradient of
        # its scaled loss is that of the mean over replicas of the slices' penalties.
        refs = [float(local[name].penalty(X[s])) for s in slices]
        _, ref_grad = single(
            lambda x, reg=local[name]: sum(reg.penalty(x[s]) for s in slices) / REPLICAS, X)
        RESULTS[f"local_value/{name}"] = maxdiff(values["local_" + name], refs)
        RESULTS[f"local_grad/{name}"] = maxdiff(grads["local_" + name], ref_grad)
        RESULTS[f"local_vs_global/{name}"] = abs(float(np.mean(refs)) - ref_value)
    ref_value, ref_grad = single(VICRegLoss(), X, X2)
    RESULTS["value/vicreg_loss"] = maxdiff(values["vicreg_loss"], [ref_value] * REPLICAS)
    RESULTS["grad/vicreg_loss"] = maxdiff(grads["vicreg_loss"], ref_grad)

    # 2. A model with all three regularizers attached: evaluate, one fit step, training.
    weights, refs, single_loss, single_weights = single_device_run(True)
    RESULTS["single/loss_vs_formula"] = abs(single_loss - refs["global"])
    with strategy.scope():
        model = build_model(True)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    RESULTS["evaluate/model"] = abs(
        model.evaluate(INPUTS, TARGETS, batch_size=BATCH, verbose=0) - single_loss)
    model.fit(INPUTS, TARGETS, batch_size=BATCH, shuffle=False, verbose=0)
    RESULTS["fit_step/model"] = maxdiff(model.get_weights(), single_weights)
    RESULTS["fit_step/model_moved"] = maxdiff(single_weights, weights)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4 * BATCH, D_IN)).astype("float32")
    y = np.tanh(x @ rng.standard_normal((D_IN, DIM))).astype("float32")
    history = model.fit(x, y, batch_size=BATCH, epochs=6, shuffle=False, verbose=0)
    RESULTS["train/loss"] = [float(v) for v in history.history["loss"]]

    # Without the option, the loss that reaches Keras is MSE + mean over replicas of the
    # slices' penalties.
    with strategy.scope():
        model = build_model(False)
        model.set_weights(weights)
        model.compile(optimizer="sgd", loss="mse")
    got = model.evaluate(INPUTS, TARGETS, batch_size=BATCH, verbose=0)
    RESULTS["local_evaluate/model"] = abs(got - refs["per_replica_mean"])
    RESULTS["local_evaluate/global_gap"] = abs(refs["global"] - refs["per_replica_mean"])

    # 3. VICRegLoss compiled as the model's loss (z_a = targets, z_b = model output): loss
    # at the initial weights (the one-step history) and the weights after one step.  The
    # model also has a (non-gathering) L2 activity regularizer: its add_loss list needs
    # make_losses_replica_local, since the gather happens after the model call.
    def projector():
        keras.utils.set_random_seed(5)
        inputs = keras.Input((D_IN,))
        dense = keras.layers.Dense(DIM, activity_regularizer=keras.regularizers.L2(1e-2))
        return keras.Model(inputs, dense(inputs))

    runs = {}
    for cross in (False, True):
        with strategy.scope() if cross else contextlib.nullcontext():
            proj = projector()
            proj.compile(optimizer=keras.optimizers.SGD(0.05), loss=VICRegLoss(cross_replica=cross))
            if cross:
                kf_backend.make_losses_replica_local(proj)
        history = proj.fit(INPUTS, TARGETS, batch_size=BATCH, shuffle=False, verbose=0)
        runs[cross] = (history.history["loss"][0], proj.get_weights())
    RESULTS["evaluate/vicreg_loss"] = abs(runs[True][0] - runs[False][0])
    RESULTS["fit_step/vicreg_loss"] = maxdiff(runs[True][1], runs[False][1])


def tf_ranking_checks():
    """Ranking losses with cross_replica=True: value, input gradient, one fit step."""
    strategy = mirrored_strategy()
    share = BATCH // REPLICAS
    slices = [slice(r * share, (r + 1) * share) for r in range(REPLICAS)]
    gathered, local = ranking_losses(True), ranking_losses(False)

    # 1. Every replica holds the global value (returned / replicas, as Keras scales losses);
    # the gradient of its returned loss w.r.t. its own rows, concatenated over replicas, is
    # the single-device gradient on the global batch.
    def replica_fn(y, x):
        values, grads = {}, {}
        for tag, losses in (("", gathered), ("local_", local)):
            for name, loss_fn in losses.items():
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = loss_fn(y, x)
                values[tag + name], grads[tag + name] = loss * REPLICAS, tape.gradient(loss, x)
        return values, grads

    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: (tf.constant(LABELS[slices[ctx.replica_id_in_sync_group]]),
                     tf.constant(UNIT[slices[ctx.replica_id_in_sync_group]])))
    values, grads = tf.function(lambda *a: strategy.run(replica_fn, args=a))(*dist)
    values = {k: [float(v) for v in strategy.experimental_local_results(t)]
              for k, t in values.items()}
    grads = {k: np.concatenate([np.asarray(g) for g in strategy.experimental_local_results(t)])
             for k, t in grads.items()}
    for name, loss_fn in local.items():
        x = tf.constant(UNIT)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss_fn(tf.constant(LABELS), x)
        ref_grad = np.asarray(tape.gradient(value, x))
        RESULTS[f"ranking/value/{name}"] = maxdiff(values[name], [float(value)] * REPLICAS)
        RESULTS[f"ranking/grad/{name}"] = maxdiff(grads[name], ref_grad)
        RESULTS[f"grad_scale/ranking/{name}"] = float(np.max(np.abs(ref_grad)))
        # Without the option each replica mines its own slice: another loss.
        refs = [float(loss_fn(LABELS[s], UNIT[s])) for s in slices]
        RESULTS[f"ranking/local_value/{name}"] = maxdiff(values["local_" + name], refs)
        RESULTS[f"ranking/local_vs_global/{name}"] = abs(float(np.mean(refs)) - float(value))

    # 2. model.fit, one step: SVMax(cross_replica=True) on the hidden layer and the ranking
    # loss compiled with cross_replica=True; weights and the reported loss vs one device.
    weights = embedding_model().get_weights()
    for name in ("triplet", "contrastive", "npair", "angular"):
        single_loss, single_weights = ranking_fit_step(local[name], weights)
        loss, got = ranking_fit_step(gathered[name], weights, strategy.scope())
        RESULTS[f"ranking/fit_loss/{name}"] = abs(loss - single_loss)
        RESULTS[f"ranking/fit_step/{name}"] = maxdiff(got, single_weights)
        RESULTS[f"ranking/fit_moved/{name}"] = maxdiff(single_weights, weights)
        if name == "triplet":
            loss, got = ranking_fit_step(local[name], weights, strategy.scope())
            RESULTS["ranking/fit_local_gap/triplet"] = maxdiff(got, single_weights)


# ---- JAX: keras.distribution.DataParallel over two host devices --------------------------

def jax_checks():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    RESULTS["jax/devices"] = len(devices)
    sharded = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))
    one = jax.devices()[0]

    def run(fn, arrays, where):
        args = [jax.device_put(a, where) for a in arrays]
        value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))(*args)
        return float(value), [np.asarray(g) for g in grads]

    # 1. jit over a batch-sharded global array: the statistic is global without gathering
    # (cross_replica=False); cross_replica=True is a no-op and gives the same numbers.
    for name, reg in regularizers(False).items():
        v_s, g_s = run(reg.penalty, [X], sharded)
        v_1, g_1 = run(reg.penalty, [X], one)
        RESULTS[f"jax/value/{name}"] = abs(v_s - v_1)
        RESULTS[f"jax/grad/{name}"] = maxdiff(g_s, g_1)
    RESULTS["jax/gather_is_identity"] = bool(
        kf_backend.gather_replicas(X) is X and kf_backend.num_replicas_in_sync() == 1)
    RESULTS["jax/shard_rows"] = int(jax.device_put(X, sharded).addressable_shards[0].data.shape[0])
    v_s, g_s = run(VICRegLoss(cross_replica=True), [X, X2], sharded)
    v_1, g_1 = run(VICRegLoss(), [X, X2], one)
    RESULTS["jax/value/vicreg_loss"] = abs(v_s - v_1)
    RESULTS["jax/grad/vicreg_loss"] = maxdiff(g_s, g_1)
    labels_sharded = jax.device_put(LABELS, sharded)
    for name, loss_fn in ranking_losses(True).items():
        v_s, g_s = run(lambda x, f=loss_fn: f(labels_sharded, x), [UNIT], sharded)
        v_1, g_1 = run(lambda x, f=loss_fn: f(LABELS, x), [UNIT], one)
        RESULTS[f"jax/value/ranking/{name}"] = abs(v_s - v_1)
        RESULTS[f"jax/grad/ranking/{name}"] = maxdiff(g_s, g_1)

    # 2. model.evaluate / one fit step, single device vs DataParallel, regularizers without
    # cross_replica.  A probe records how the regularized activations are laid out inside
    # the jitted step (PartitionSpec('batch'): sharded, one global array).
    weights, refs, single_loss, single_weights = single_device_run(False)
    RESULTS["jax/single/loss_vs_formula"] = abs(single_loss - refs["global"])
    RESULTS["jax/global_vs_per_replica_gap"] = abs(refs["global"] - refs["per_replica_mean"])

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        layouts = []
        model = build_model(False)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        hidden_layer = model.get_layer("hidden")
        original_call = hidden_layer.call

        def probed(inputs, *args, _call=original_call, **kwargs):
            out = _call(inputs, *args, **kwargs)
            jax.debug.inspect_array_sharding(
                out, callback=lambda s: layouts.append(
                    "replicated" if s.is_fully_replicated else str(s.spec)))
            return out

        hidden_layer.call = probed
        got = model.evaluate(INPUTS, TARGETS, batch_size=BATCH, verbose=0)
        RESULTS["jax/evaluate/model"] = abs(got - single_loss)
        model.fit(INPUTS, TARGETS, batch_size=BATCH, shuffle=False, verbose=0)
        RESULTS["jax/fit_step/model"] = maxdiff(model.get_weights(), single_weights)
        RESULTS["jax/hidden_layouts"] = sorted(set(layouts))
    finally:
        keras.distribution.set_distribution(None)

    # 3. TripletLoss(cross_replica=True) compiled, SVMax(cross_replica=True) attached: one
    # DataParallel fit step equals one single-device step (the loss is already global).
    weights = embedding_model().get_weights()
    single_loss, single_weights = ranking_fit_step(lr.TripletLoss(), weights)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        loss, got = ranking_fit_step(lr.TripletLoss(cross_replica=True), weights)
    finally:
        keras.distribution.set_distribution(None)
    RESULTS["jax/ranking/fit_loss"] = abs(loss - single_loss)
    RESULTS["jax/ranking/fit_step"] = maxdiff(got, single_weights)
    RESULTS["jax/ranking/fit_moved"] = maxdiff(single_weights, weights)


if __name__ == "__main__":
    start = time.process_time()
    if MODE == "jax":
        jax_checks()
    else:
        tf_checks()
        tf_ranking_checks()
    RESULTS["cpu_seconds"] = {"total": time.process_time(), "checks": time.process_time() - start}
    print("RESULTS " + json.dumps(RESULTS))
