"""Cost of cross_replica=True: one MirroredStrategy train step, gathered vs local statistics.

    python benchmarks/bench_distributed.py [--replicas 2] [--batch 144] [--dim 128] [--steps 30]

Runs on `--replicas` logical CPU devices (TensorFlow backend).  The model is the SVMax paper's
embedding head size (d = 128) on a small MLP; each configuration is trained with
`model.fit` for `--steps` steps per round; rounds alternate between configurations (so
that machine load affects them alike).  Reported per step: the fastest round's wall time
and the median process CPU time (all threads; robust to other processes on a shared
machine), and the extra cost of the gathered regularizer over the local one.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402  (standard library only)

parser = argparse.ArgumentParser()
parser.add_argument("--replicas", type=int, default=2)
parser.add_argument("--batch", type=int, default=144)
parser.add_argument("--dim", type=int, default=128)
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--rounds", type=int, default=7)
args = parser.parse_args()

_timing.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * args.replicas)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_featreg.regularizers import SVMax, VICReg  # noqa: E402

strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.replicas)])
rng = np.random.default_rng(0)
x = rng.standard_normal((args.batch * args.steps, 256)).astype("float32")
y = rng.standard_normal((args.batch * args.steps, args.dim)).astype("float32")


def make(regularizer):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((256,))
        h = keras.layers.Dense(512, activation="relu")(inputs)
        out = keras.layers.Dense(args.dim, activity_regularizer=regularizer)(h)
        model = keras.Model(inputs, out)
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    model.fit(x[: args.batch], y[: args.batch], batch_size=args.batch, verbose=0)  # trace
    return model


configs = {
    "none": make(None),
    "svmax_local": make(SVMax(1.0)),
    "svmax_gathered": make(SVMax(1.0, cross_replica=True)),
    "vicreg_local": make(VICReg()),
    "vicreg_gathered": make(VICReg(cross_replica=True)),
}
wall = {name: [] for name in configs}
cpu = {name: [] for name in configs}
for _ in range(args.rounds):
    for name, model in configs.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0)
        wall[name].append((time.perf_counter() - start) / args.steps * 1e3)
        cpu[name].append((time.process_time() - start_cpu) / args.steps * 1e3)
report = {"replicas": args.replicas, "global_batch": args.batch, "dim": args.dim,
          "load_average": os.getloadavg()[0]}
for label, stats in (("wall_min", {k: min(v) for k, v in wall.items()}),
                     ("cpu_median", {k: float(np.median(v)) for k, v in cpu.items()})):
    report[f"{label}_ms_per_step"] = {k: round(v, 2) for k, v in stats.items()}
    for reg in ("svmax", "vicreg"):
        local, gathered = stats[f"{reg}_local"], stats[f"{reg}_gathered"]
        report[f"{label}_{reg}_gathered_extra"] = (
            f"{gathered - local:+.2f} ms ({100 * (gathered - local) / local:+.1f} %)")
print(json.dumps(report, indent=1))
