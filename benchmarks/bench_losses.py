"""Every loss, forward+backward, against pytorch-metric-learning (PML) on torch CPU.

For each loss of :mod:`keras_featreg.losses`: the median wall time of one
forward+backward (gradient w.r.t. the embeddings, and the proxies / class weights where
the loss has them) on L2-normalized embeddings, ``tf.function`` without and with XLA
(``jit_compile``), at b = 144, d = 128 and at b = 512, d = 512; and the same loss in PML
(2.9, the configuration the parity fixtures document) in the same run, when torch and
PML are installed (the column is skipped otherwise). Batches: ``b/4 x 4`` (pair, triplet
and proxy losses; the proxy losses have 100 classes, or b/4 if more), ``b/2 x 2``
(N-pair, angular), two views of ``b/2`` rows (SupCon/NT-Xent use the one-batch form,
VICReg/Barlow Twins the ``(z_a, z_b)`` form). Cases are timed in interleaved rounds
(A B C ... A B C ...), so machine drift hits them alike; ratios come from one run.

Run:  python benchmarks/bench_losses.py              (~3 min on 2 CPU cores)
      python benchmarks/bench_losses.py --quick      (b = 144 only, fewer rounds)
Target (issue 13): no loss slower than PML at b = 144 (the best of our two compiled
forms against PML); the script prints the losses that miss it and exits 1 if any does.
"""

import argparse
import statistics
import sys
import time

import _timing  # noqa: I001  (environment first; standard library only)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="b = 144 only, 3 rounds")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--only", nargs="*", help="loss names to time (default: all)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_timing.import_keras()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_featreg import losses  # noqa: E402
from keras_featreg.ops import pairwise as distances_ops  # noqa: E402

# name: (our loss name for losses.get, its kwargs, layout, PML class, PML kwargs, PML miner)
# layout: "pairs" (b/4 x 4), "npair" (b/2 x 2), "proxy" (b/4 x 4 + class weights),
# "views" (two views).
SPECS = {
    "contrastive": ("contrastive", {}, "pairs", "ContrastiveLoss",
                    {"pos_margin": 0.0, "neg_margin": 1.0}, None),
    "contrastive balanced": ("contrastive", {"miner": "balanced_pair"}, "pairs", None, {}, None),
    "triplet semi-hard": ("triplet", {"mining": "semi_hard"}, "pairs", "TripletMarginLoss",
                          {"margin": 0.2}, ("TripletMarginMiner", {"margin": 0.2,
                                                                   "type_of_triplets": "semihard"})),
    "triplet hard": ("triplet", {"mining": "hard"}, "pairs", "TripletMarginLoss", {"margin": 0.2},
                     ("BatchHardMiner", {})),
    "triplet all": ("triplet", {"mining": "all"}, "pairs", "TripletMarginLoss", {"margin": 0.2},
                    None),
    "npair": ("npair", {}, "npair", "NPairsLoss", {}, None),
    "angular": ("angular", {}, "npair", "AngularLoss", {"alpha": 45}, None),
    "multi-similarity": ("multi_similarity", {"miner": "multi_similarity"}, "pairs",
                         "MultiSimilarityLoss", {"alpha": 2, "beta": 50, "base": 0.5},
                         ("MultiSimilarityMiner", {"epsilon": 0.1})),
    "supcon": ("supcon", {}, "pairs", "SupConLoss", {"temperature": 0.1}, None),
    "ntxent": ("ntxent", {}, "pairs", "NTXentLoss", {"temperature": 0.07}, None),
    "lifted structure": ("lifted_structure", {}, "pairs", "LiftedStructureLoss",
                         {"neg_margin": 1.0, "pos_margin": 0.0}, None),
    "proxy-anchor": ("proxy_anchor", {}, "proxy", "ProxyAnchorLoss",
                     {"margin": 0.1, "alpha": 32}, None),
    "arcface": ("arcface", {}, "proxy", "ArcFaceLoss", {"margin": 28.6, "scale": 64}, None),
    "cosface": ("cosface", {}, "proxy", "CosFaceLoss", {"margin": 0.35, "scale": 64}, None),
    "vicreg": ("vicreg", {}, "views", "VICRegLoss", {}, None),
    "barlow twins": ("barlow_twins", {}, "views", None, {}, None),
}


def our_loss(name, kwargs, num_classes=None, embedding_size=None):
    extra = {} if num_classes is None else {"num_classes": num_classes,
                                            "embedding_size": embedding_size}
    return losses.get(name, **kwargs, **extra)


def layout(kind, b, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, d)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    per_class = 2 if kind == "npair" else 4
    labels = rng.permutation(np.repeat(np.arange(b // per_class), per_class))
    num_classes = max(100, b // 4)
    proxies = rng.standard_normal((num_classes, d)).astype("float32")
    return labels, x, proxies


def ours_step(loss, kind, labels, x, proxies, jit):
    """A compiled forward+backward and its arguments."""
    y = tf.constant(labels)
    if kind == "proxy":
        def fn(e, p):
            return loss(y, distances_ops.cosine_similarity_matrix(e, p))
        args = (tf.constant(x), tf.constant(proxies))
    elif kind == "views":
        half = x.shape[0] // 2

        def fn(e):
            return loss(e[:half], e[half:])
        args = (tf.constant(x),)
    else:
        def fn(e):
            return loss(y, e)
        args = (tf.constant(x),)

    @tf.function(jit_compile=jit)
    def step(*tensors):
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            value = fn(*tensors)
        return value, tape.gradient(value, list(tensors))

    return lambda: tf.nest.map_structure(lambda t: t.numpy(), step(*args))


def pml_step(spec, kind, labels, x, proxies):
    """PML's forward+backward, or None when torch/PML is missing or PML has no such loss."""
    _, _, _, cls_name, pml_kwargs, miner_spec = spec
    if cls_name is None:
        return None
    try:
        import torch
        from pytorch_metric_learning import losses as pml_losses
        from pytorch_metric_learning import miners as pml_miners
    except ImportError:
        return None
    torch.set_num_threads(2)
    cls = getattr(pml_losses, cls_name)
    y = torch.tensor(labels)
    e = torch.tensor(x, requires_grad=True)
    if kind == "proxy":
        loss = cls(num_classes=proxies.shape[0], embedding_size=x.shape[1], **pml_kwargs)
    else:
        loss = cls(**pml_kwargs)
    miner = None
    if miner_spec is not None:
        miner = getattr(pml_miners, miner_spec[0])(**miner_spec[1])
    half = x.shape[0] // 2

    def step():
        if e.grad is not None:
            e.grad = None
        loss.zero_grad()
        if kind == "views":
            value = loss(e[:half], ref_emb=e[half:])
        elif miner is not None:
            value = loss(e, y, miner(e, y))
        else:
            value = loss(e, y)
        value.backward()
        return float(value)

    return step


def run(batches, rounds, only):
    rows, misses = [], []
    for b, d in batches:
        names = [n for n in SPECS if not only or n in only]
        for name in names:
            spec = SPECS[name]
            kind = spec[2]
            labels, x, proxies = layout(kind, b, d)
            num_classes = proxies.shape[0] if kind == "proxy" else None
            loss = our_loss(spec[0], spec[1], num_classes, d)
            steps = {"tf.function": ours_step(loss, kind, labels, x, proxies, False),
                     "XLA": ours_step(loss, kind, labels, x, proxies, True)}
            pml = pml_step(spec, kind, labels, x, proxies)
            if pml is not None:
                steps["PML"] = pml
            times = {k: [] for k in steps}
            for fn in steps.values():  # compile and warm up
                fn()
                fn()
            for _ in range(rounds):
                for k, fn in steps.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            best = min(ms["tf.function"], ms["XLA"])
            if "PML" in ms:
                ratio = f"{best / ms['PML']:.2f}"
                if b == 144 and best > ms["PML"]:
                    misses.append(f"{name} at b={b}: {best:.2f} ms > PML {ms['PML']:.2f} ms")
            else:
                ratio = ""
            rows.append((b, d, name, f"{ms['tf.function']:.2f}", f"{ms['XLA']:.2f}",
                         f"{ms['PML']:.2f}" if "PML" in ms else "-", ratio,
                         f"{best / ms['tf.function']:.2f}"))
            print(f"  timed {name} b={b}", file=sys.stderr, flush=True)
    return rows, misses


def main(argv=None):
    args = parse_args(argv)
    batches = [(144, 128)] if args.quick else [(144, 128), (512, 512)]
    rounds = 3 if args.quick else args.rounds
    print("forward+backward, median ms; 'best / PML' = the faster of our two compiled forms "
          "divided by PML's time (< 1: faster than PML), same run", flush=True)
    rows, misses = run(batches, rounds, args.only)
    print(_timing.table(rows, ["b", "d", "loss", "tf.function ms", "XLA ms", "PML ms",
                               "best / PML", "best / tf.function"]))
    if misses:
        print("\nSLOWER THAN PML at b = 144:\n  " + "\n  ".join(misses))
        return 1
    print("\nno loss slower than PML at b = 144 (among those PML has)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
