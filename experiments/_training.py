"""``table1.py``'s training: the grid of runs, each of which builds and compiles a model,
trains it for K iterations on p x l class-balanced batches with a progress line every
``--log-every`` iterations and evaluates it on the test classes (one CSV row); the
``--distributed`` strategy. Import it after ``_common.import_keras()``."""

import math
import time

import _study
import keras
import numpy as np
from _models import build_and_compile
from _protocol import batch_layout, make_regularizer
from keras import ops

from keras_featreg import evaluation


def distribution_strategy(args, script):
    """``--distributed``: a ``tf.distribute.MirroredStrategy``; else None."""
    if not args.distributed:
        return None
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("--distributed needs KERAS_BACKEND=tensorflow (on JAX use "
                         "keras.distribution.DataParallel: statistics are global there)")
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy()
    print(f"[{script}] MirroredStrategy over {strategy.num_replicas_in_sync} replica(s); "
          "the batch size is the global batch")
    return strategy


def run_grid(args, train, test, input_scale, strategy=None):
    """Every loss x batch size x lr x seed x regularizer of `args`, one row each."""
    grid = [(loss, b, lr, seed, reg) for loss in args.losses for b in args.batch_sizes
            for lr in args.lrs for seed in args.seeds for reg in args.regularizers]
    rows = []
    for i, (loss, b, lr, seed, reg) in enumerate(grid, 1):
        p, l = batch_layout(loss, b, len(np.unique(train[1])))
        lam = make_regularizer(reg, loss, args.svmax_lambda)[1]
        print(f"[{i}/{len(grid)}] {loss} + {reg}{f' (lambda={lam:g})' if lam else ''}  "
              f"lr={lr:g} seed={seed} batch {p}x{l}={p * l}", flush=True)
        row = train_and_evaluate(args, train, test, input_scale, loss, reg, lr, seed, b,
                                 strategy)
        rows.append(row)
        if row["diverged"]:
            print("    -> diverged (NaN loss)")
        else:
            print(f"    -> NMI {row['nmi']:.3f}  R@1 {row['r@1']:.2f}  R@8 {row['r@8']:.2f}  "
                  f"test s_mu {row['test_s_mu']:.3f} (U={row['test_s_mu_upper']:.3f})  "
                  f"{row['seconds']:.1f}s", flush=True)
    return rows


class _Progress(keras.callbacks.Callback):
    def __init__(self, steps_per_log, total):
        super().__init__()
        self.steps_per_log, self.total = steps_per_log, total
        self.start = time.perf_counter()
        self.last_loss = float("nan")

    def on_epoch_end(self, epoch, logs=None):
        self.last_loss = float((logs or {}).get("loss", float("nan")))
        step = (epoch + 1) * self.steps_per_log
        lr = self.model.optimizer.learning_rate
        print(f"    it {step:>5}/{self.total}  loss {self.last_loss:.4f}  "
              f"lr {float(ops.convert_to_numpy(lr)):.2e}  "
              f"{time.perf_counter() - self.start:5.1f}s", flush=True)


def train_and_evaluate(args, train, test, input_scale, loss_name, reg_name, lr, seed,
                       batch_size, strategy=None):
    (x_tr, y_tr), (x_te, y_te) = train, test
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    num_classes = len(np.unique(y_tr))
    p, l = batch_layout(loss_name, batch_size, num_classes)
    model, lam = build_and_compile(args, loss_name, reg_name, lr, x_tr.shape[1:], input_scale,
                                   strategy)
    steps_per_log = max(1, min(args.log_every, args.iterations))
    progress = _Progress(steps_per_log,
                         max(1, math.ceil(args.iterations / steps_per_log)) * steps_per_log)
    start = time.perf_counter()
    train_seconds, final_loss = _study.fit(model, x_tr, y_tr, p, l, seed, args.iterations,
                                           steps_per_epoch=steps_per_log, callbacks=[progress])
    emb = evaluation.embed(model, x_te, batch_size=512, verbose=0)
    row = {
        "dataset": args.dataset, "loss": loss_name, "regularizer": reg_name, "lambda": lam,
        "lr": lr, "seed": seed, "batch_size": p * l, "p": p, "l": l,
        "iterations": args.iterations, "final_loss": final_loss,
        **_study.evaluate(emb, y_te, final_loss, ks=(1, 2, 4, 8), full=True),
        "train_seconds": train_seconds,
    }
    row["seconds"] = time.perf_counter() - start
    return row
