"""Smoke tests of the issue-6 benchmark scripts (``benchmarks/``) on tiny shapes.

Timing is not asserted (it belongs in the benchmarks): these tests only keep the scripts
runnable and check the accuracy section's own pass/fail logic.  The benchmarks time
``tf.function`` with and without XLA, hence ``tensorflow_only``.  Every script's ``--help``
must answer without loading TensorFlow (any backend).
"""

import math
import sys
from pathlib import Path

import pytest
from _helpers import run_help

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = (
    "bench_all_layers.py", "bench_collapse.py", "bench_distributed.py", "bench_losses.py", "bench_mining.py", "bench_recall.py", "bench_search.py", "bench_spectral.py",
    "bench_train_step.py", "distance_accuracy.py",
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    """``--help`` exits 0 without importing TensorFlow, Keras or JAX, and prints no
    TensorFlow start-up lines."""
    run_help(BENCHMARKS / script)


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_spectral
        import bench_train_step

        yield bench_spectral, bench_train_step
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.tensorflow_only
def test_spectral_accuracy_section(bench):
    bench_spectral, _ = bench
    rows, failures = [], []
    bench_spectral.accuracy([(16, 8), (8, 32)], rows, failures)
    assert failures == []
    errors = [float(v) for r in rows for v in r[2:] if v]
    assert len(rows) == 8 and all(0.0 <= e < 1e-3 for e in errors)


@pytest.mark.tensorflow_only
def test_spectral_speed_section(bench):
    bench_spectral, _ = bench
    rows, failures = [], []
    bench_spectral.speed([(16, 8)], 1, rows, failures)
    # no XLA: svd, gram, newton_schulz, auto; XLA: newton_schulz; then VICReg twice
    assert len(rows) == 7
    assert all(float(r[4]) > 0 for r in rows)


@pytest.mark.tensorflow_only
def test_train_step_and_floor(bench):
    _, bench_train_step = bench
    rows, overhead, step_ms = bench_train_step.run(False, 1, 1, 16, True)
    assert [r[0] for r in rows] == list(bench_train_step.CONFIGS)
    assert all(math.isfinite(v) for v in overhead.values()) and step_ms > 0
    floors = bench_train_step.floor_rows(False, step_ms, 16)
    assert len(floors) == 3


@pytest.mark.tensorflow_only
def test_loss_benchmark_times_every_loss_on_a_tiny_batch():
    """Every loss of the table runs compiled (with and without XLA) at b = 16; the PML
    column appears when torch and pytorch-metric-learning are installed."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_losses
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows, _ = bench_losses.run([(16, 8)], 1, None)
    assert len(rows) == len(bench_losses.SPECS)
    timed = [r for r in rows if r[3] != "not in this version"]
    assert len(timed) >= 6 and all(float(r[3]) > 0 and float(r[4]) > 0 for r in timed)


@pytest.mark.tensorflow_only
def test_mining_benchmark_speed_section_on_a_tiny_batch():
    """Our cases compiled with and without XLA; PML's rows when torch and PML are installed."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_mining
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows, failures = [], []
    bench_mining.speed([16], 1, False, rows, failures)
    cases = {(r[1], r[2]) for r in rows}
    assert ("no XLA", "semi-hard") in cases and ("XLA", "all") in cases
    assert failures == [] and all(float(r[3]) > 0 for r in rows)


def test_all_layers_benchmark_times_the_five_settings():
    """The five settings of experiments/all_layers.py, one interleaved round (any backend)."""
    import subprocess

    from _helpers import script_env

    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_all_layers.py"),
                           "--rounds", "1", "--steps-per-round", "1"],
                          env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split("|")[1:4] for line in proc.stdout.splitlines()
            if line.startswith("| ") and "step ms" not in line]
    assert [r[0].strip() for r in rows] == ["none", "weight decay", "SVMax, embedding",
                                            "SVMax, every layer", "VICReg, every layer"]
    assert all(float(r[1]) > 0 for r in rows) and rows[0][2].strip() == "1.00x"


def test_search_benchmark_on_a_tiny_gallery():
    """Every row of the search benchmark (exact, faiss flat, IVF, HNSW) on 2 000 items; the
    approximate indexes' agreement with exact is in [0, 1] and faiss flat's is 1."""
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_search
    finally:
        sys.path.remove(str(BENCHMARKS))
    args = bench_search.main.__globals__["argparse"].Namespace(
        gallery=[2000], queries=40, dim=16, k=5, noise=2.0, intrinsic_dim=4, nlist=16, nprobe=[4],
        ef_search=[32], hnsw_max=2000, out=None)
    lines, _ = bench_search.run(args)
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| 2000")]
    assert [r[1].strip() for r in rows] == ["exact", "faiss flat", "faiss ivf", "faiss hnsw"]
    assert all(float(r[4]) > 0 for r in rows)
    assert float(rows[1][7]) == 1.0 and all(0 <= float(r[7]) <= 1 for r in rows[1:])
    assert "Recall@1 = " in lines[-1]


@pytest.mark.tensorflow_only
def test_collapse_benchmark_times_every_measure_on_a_small_matrix():
    """Every collapse measure and the SVD baseline on a 200 x 32 matrix."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_collapse
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows, failures = [], []
    bench_collapse.run(200, 32, 1, rows, failures)
    assert [r[0] for r in rows][:3] == ["plain SVD (baseline)", "effective_rank", "alpha_req"]
    assert len(rows) == 8 and failures == [] and all(float(r[1]) >= 0 for r in rows)
