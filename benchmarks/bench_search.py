"""Benchmark of keras_featreg.search.Index: exact (NumPy) against faiss flat, IVF and HNSW.

Usage:
    python benchmarks/bench_search.py [--gallery 100000 1000000] [--queries 10000]
                                      [--dim 128] [--k 10] [--noise 1.5] [--intrinsic-dim R] [--hnsw-max 100000]
                                      [--nlist 1024] [--nprobe 8 32 128] [--out FILE]

For every gallery size n, on synthetic clustered L2-normalized float32 embeddings
(``bench_recall.clustered_embeddings`` with ``--noise``, one class per 100 items, the
queries drawn from the same classes): the build time (``add``), the query time of ``search(queries, k)``
and the peak memory of the search (tracemalloc, which sees NumPy's buffers, and the
growth of the process's RSS, which also sees faiss's), for the exact backend and faiss
flat (same run: the ratio exact / flat), then IVF (each ``--nprobe``) and HNSW (up to
``--hnsw-max`` items: its build is the slow part on 2 cores) with their agreement with
the exact top-1 ("top-1 agree") and the overlap of their top-k with the exact top-k
("recall@k"), and their query speed-up over exact. Last, Recall@{1,10} of the queries
against the largest gallery through the exact index (``evaluation.recall_at_k`` with
``reference_embeddings``), timed end to end.

Targets (printed, exit status 1 when missed): exact within 1.5x of faiss flat's query
time; at the largest gallery an approximate index with top-1 agreement >= 0.98 at
>= 10x less query time than exact; the end-to-end Recall@K under 60 s.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_recall import clustered_embeddings, peak_memory  # noqa: E402  (puts examples/ on the path)
import _common  # noqa: E402,I001  (standard library only)

EXACT_RATIO_TARGET = 1.5
APPROX_AGREEMENT_TARGET = 0.98
APPROX_SPEEDUP_TARGET = 10.0
END_TO_END_TARGET_S = 60.0


def data(n, queries, dim, noise, intrinsic_dim=None, seed=0):
    """Gallery and queries from the same clusters (one class per 100 gallery items).

    With `intrinsic_dim` r, the clusters are drawn in r dimensions and mapped into `dim`
    by a random isometry (distances unchanged): embeddings of intrinsic dimension r, as
    trained embeddings whose spectrum decays, instead of isotropic clusters.
    """
    classes = max(2, n // 100)
    x, labels = clustered_embeddings(n + queries, intrinsic_dim or dim, classes, seed=seed,
                                     noise=noise)
    if intrinsic_dim:
        rng = np.random.default_rng(seed + 1)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, intrinsic_dim)))
        x = (x @ basis.T.astype(np.float32)).astype(np.float32)
    return x[:n], labels[:n], x[n:], labels[n:]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def overlap(a, b):
    """Mean fraction of each row of `a` found in the same row of `b`."""
    return float(np.mean([np.intersect1d(x, y).size / len(x) for x, y in zip(a, b)]))


def run(args):
    from keras_featreg.evaluation import recall_at_k
    from keras_featreg.search import Index

    rows, failures = [], []
    header = ("| gallery | index | params | build s | query s | vs exact | peak MiB (traced/RSS) "
              "| top-1 agree | recall@k |")
    lines = [f"queries={args.queries}, dim={args.dim}, k={args.k}, noise={args.noise}, "
             f"intrinsic dim={args.intrinsic_dim or args.dim}; times: one run each, same process",
             header, "|" + "---|" * 9]
    for n in args.gallery:
        gallery, labels, queries, query_labels = data(n, args.queries, args.dim, args.noise,
                                                      args.intrinsic_dim)
        exact = Index()
        _, build = timed(lambda: exact.add(gallery, labels=labels))
        (truth, query_s), traced_rss = _search_with_memory(exact, queries, args.k)
        lines.append(_row(n, "exact", "", build, query_s, 1.0, traced_rss, None, None))
        configs = [("faiss flat", {"faiss_index": "flat"}, {})]
        configs += [("faiss ivf", {"faiss_index": "ivf", "nlist": args.nlist, "nprobe": p},
                     {"nprobe": p}) for p in args.nprobe]
        if n <= args.hnsw_max:
            configs += [("faiss hnsw", {"faiss_index": "hnsw", "M": 32, "ef_search": e},
                         {"ef_search": e}) for e in args.ef_search]
        built = {}
        for name, params, search_params in configs:
            kind = params["faiss_index"]
            if kind not in built:
                index = Index(backend="faiss", **{k: v for k, v in params.items()
                                                  if k not in ("nprobe", "ef_search")})
                _, build = timed(lambda: index.add(gallery, labels=labels))
                built[kind] = (index, build)
            index, build = built[kind]
            if search_params:
                index.set_search_params(**search_params)
            (result, seconds), traced_rss = _search_with_memory(index, queries, args.k)
            agree = float(np.mean(result.indices[:, 0] == truth.indices[:, 0]))
            recall = overlap(truth.indices, result.indices)
            ratio = seconds / query_s
            lines.append(_row(n, name, _params(search_params or params), build, seconds, ratio,
                              traced_rss, agree, recall))
            rows.append((n, name, search_params, seconds, query_s, agree))
            if kind == "flat" and query_s > EXACT_RATIO_TARGET * seconds:
                failures.append(f"n={n}: exact {query_s:.2f} s > {EXACT_RATIO_TARGET} x faiss "
                                f"flat {seconds:.2f} s")
        built.clear()  # free the faiss indexes before the next size
    largest = max(args.gallery)
    approx = [r for r in rows if r[0] == largest and r[1] != "faiss flat"]
    good = [r for r in approx if r[5] >= APPROX_AGREEMENT_TARGET
            and r[4] >= APPROX_SPEEDUP_TARGET * r[3]]
    if approx and not good:
        failures.append(f"n={largest}: no approximate index with top-1 agreement >= "
                        f"{APPROX_AGREEMENT_TARGET} at >= {APPROX_SPEEDUP_TARGET}x less time")
    recalls, seconds = timed(lambda: recall_at_k(
        queries, query_labels, ks=(1, 10), reference_embeddings=gallery,
        reference_labels=labels))
    lines.append("")
    lines.append(f"Recall@1 = {recalls[1]:.4f}, Recall@10 = {recalls[10]:.4f} of {args.queries} "
                 f"queries against the {largest}-item gallery (exact index), end to end: "
                 f"{seconds:.1f} s")
    if seconds > END_TO_END_TARGET_S:
        failures.append(f"end-to-end Recall@K {seconds:.1f} s > {END_TO_END_TARGET_S} s")
    return lines, failures


def _search_with_memory(index, queries, k):
    """(result, seconds) of one search after a small warm-up one, and its peak memory."""
    index.search(queries[:16], k=k)  # thread pools, lazily built factors
    out = {}

    def work():
        out["value"] = timed(lambda: index.search(queries, k=k))

    traced, rss = peak_memory(work)
    return out["value"], (traced, rss)


def _params(params):
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "faiss_index")


def _row(n, name, params, build, query_s, ratio, traced_rss, agree, recall):
    traced, rss = traced_rss
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"| {n} | {name} | {params} | {build:.3g} | {query_s:.3g} | {ratio:.2f}x | "
            f"{traced / 2**20:.0f} / {rss / 2**20:.0f} | {fmt(agree)} | {fmt(recall)} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--noise", type=float, default=1.5,
                        help="within-class spread (bench_recall.clustered_embeddings)")
    parser.add_argument("--intrinsic-dim", type=int, default=None,
                        help="draw the clusters in this many dimensions, mapped into --dim "
                             "by a random isometry (default: isotropic in --dim)")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--hnsw-max", type=int, default=100_000,
                        help="largest gallery given an HNSW index (its build is slow)")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    _common.import_keras(tensorflow=False)  # without TensorFlow's native start-up lines
    lines, failures = run(args)
    text = "\n".join(lines + [""] + (["FAIL: " + f for f in failures] or ["all targets met"]))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"$ python benchmarks/bench_search.py {' '.join(argv or sys.argv[1:])}\n")
            f.write(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
