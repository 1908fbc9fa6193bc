"""Smoke tests of the example scripts (``examples/``) and the quick-start notebook (the
paper-reproduction harness, ``experiments/``, is tested in ``test_experiments.py``).

Each script runs with ``--quick`` (a few training steps on a tiny subset) in a subprocess,
which inherits ``KERAS_BACKEND``; the tests check that the outputs exist and that the
printed metrics are finite. Every example runs on every backend: the GAN example trains
with ``train_on_batch`` (the classic Keras GAN pattern), the VICReg-SSL example through
``compute_loss``. ``--help`` must not load TensorFlow, and no run may print TensorFlow's
native start-up lines. The VICReg-SSL run reads random Fashion-MNIST-format IDX files
written by the test: it needs no data set.
"""

import json
import math
import re
from pathlib import Path

import pytest
from _helpers import (
    SCRIPT_TIMEOUT,
    assert_finite_columns as _assert_finite_columns,
    assert_no_native_noise,
    assert_small_png as _assert_small_png,
    numbers_after as _numbers_after,
    read_csv as _read_csv,
    run_help,
    run_script as _run,
    write_fake_fashion_mnist,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = ("examples/retrieval.py", "examples/gan_mixture.py", "examples/circle_embedding.py",
           "examples/vicreg_ssl.py", "examples/search.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    """``--help`` exits 0 without importing TensorFlow, Keras or JAX, and prints no
    TensorFlow start-up lines."""
    out = run_help(ROOT / script)
    assert "--quick" in out and "--mixed-precision" in out


def test_retrieval_quick(tmp_path):
    """The teaching script: per-run NMI / R@1 / R@8 from the library's callbacks, a table."""
    out = _run([EXAMPLES / "retrieval.py", "--quick", "--out", tmp_path], quiet=True)
    recalls, nmis = _numbers_after("R@1", out), _numbers_after("NMI", out)
    assert len(recalls) == len(nmis) == 4  # contrastive, npair x none, svmax
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in recalls)
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in nmis)
    assert "training on" in out  # the device line
    assert "| loss | regularizer | lr | NMI |" in out
    runs = _read_csv(tmp_path / "retrieval_digits.csv")
    _assert_finite_columns(runs, ["nmi", "r@1", "r@8", "test_s_mu", "test_s_mu_upper"])
    assert {r["regularizer"] for r in runs} == {"none", "svmax"}
    _assert_small_png(tmp_path / "retrieval_digits.png")


def test_search_quick(tmp_path):
    """The search tutorial: index, look up, calibrate, match unknowns, reload the bundle."""
    out = _run([EXAMPLES / "search.py", "--quick", "--out", tmp_path], quiet=True)
    precision = _numbers_after("precision@1 of 316 queries:", out)
    assert precision and 0 <= precision[0] <= 1
    assert re.search(r"threshold \d+\.\d+ \(cosine distance\): precision", out)
    rejected = re.findall(r"new digits 8, 9: (\d\.\d+) rejected as unknown", out)
    assert rejected and 0 <= float(rejected[0]) <= 1
    assert re.search(r"reloaded bundle from .*digits_bundle: digits \[", out)
    assert sorted(p.name for p in (tmp_path / "digits_bundle").iterdir()) == [
        "bundle.json", "index.npz", "model.keras"]
    _assert_small_png(tmp_path / "neighbours.png")
    _assert_small_png(tmp_path / "calibration.png")


def test_gan_mixture_quick(tmp_path):
    """The teaching script, one seed per variant: final mode metrics and the heatmaps."""
    out = _run([EXAMPLES / "gan_mixture.py", "--quick", "--unrolled-steps", 2, "--steps", 10,
                "--out", tmp_path], quiet=True)
    covered = re.findall(r"-> modes covered (\d)/8, high-quality (\d+\.\d)%", out)
    assert len(covered) == 4, out[-2000:]  # vanilla, svmax, unrolled2, unrolled2+svmax
    s_mu = _numbers_after("s_mu", out)
    assert s_mu and all(math.isfinite(v) and v > 0 for v in s_mu)
    _assert_small_png(tmp_path / "gan_heatmaps.png")


def test_circle_embedding_quick(tmp_path):
    out = _run([EXAMPLES / "circle_embedding.py", "--quick", "--out", tmp_path])
    s_mu = _numbers_after("test s_mu", out)
    assert s_mu and all(math.isfinite(v) and v > 0 for v in s_mu)
    rows = _read_csv(tmp_path / "circle_embedding.csv")
    _assert_finite_columns(rows, ["test_s_mu", "r@1", "circle_coverage_%"])
    assert [r["variant"] for r in rows] == ["vanilla", "svmax"]
    _assert_small_png(tmp_path / "circle_embedding.png")


def test_vicreg_ssl_quick(tmp_path):
    """The whole example on random images in Fashion-MNIST's format: the code path, not the
    data set (the loader reads the real one in test_data.py when it is installed)."""
    data = write_fake_fashion_mnist(tmp_path / "fashion-mnist", train=300, test=100)
    out_dir = tmp_path / "out"
    out = _run([EXAMPLES / "vicreg_ssl.py", "--quick", "--data-dir", data,
                "--pretrain-samples", 256, "--probe-samples", 60, "--out", out_dir])
    assert "256 unlabelled pretraining images, linear probe on 60 / 60" in out
    accuracies = _numbers_after("linear probe", out)
    assert len(accuracies) == 3  # random init, vicreg, svmax
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in accuracies)
    rows = _read_csv(out_dir / "vicreg_ssl.csv")
    _assert_finite_columns(rows, ["probe_acc_%", "repr_collapsed_%", "emb_s_mu_position"])
    assert [r["encoder"] for r in rows] == ["random init", "vicreg", "svmax"]
    _assert_small_png(out_dir / "vicreg_ssl.png")


def test_quickstart_notebook_committed_with_outputs():
    """The notebook is committed executed (readers see its text and figure without running
    it), in order, without stderr output, and small."""
    path = EXAMPLES / "quickstart.ipynb"
    assert path.stat().st_size < 1024 * 1024
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c["outputs"]]
    assert all(c["outputs"] for c in cells)
    assert not [o for o in outputs if o["output_type"] == "error" or o.get("name") == "stderr"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_quickstart_notebook():
    """Executes the notebook afresh, in memory (the file in the repository is not written)."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=SCRIPT_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    streams = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if output.get("output_type") == "stream"]
    text = "\n".join(output.get("text", "") for output in streams)
    assert_no_native_noise("".join(o.get("text", "") for o in streams if o.get("name") == "stderr"))
    recalls = _numbers_after("R@1", text)
    assert len(recalls) == 2 and all(math.isfinite(v) for v in recalls), text[-2000:]
    assert len(_numbers_after("NMI", text)) == 2
