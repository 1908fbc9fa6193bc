"""Smoke tests of the example scripts (``examples/``), the paper-reproduction harness
(``experiments/``) and the quick-start notebook.

Each script runs with ``--quick`` (a few training steps on a tiny subset) in a subprocess,
which inherits ``KERAS_BACKEND``; the tests check that the outputs exist and that the
printed metrics are finite. Every example runs on every backend: the GAN example trains
with ``train_on_batch`` (the classic Keras GAN pattern), the VICReg-SSL example through
``compute_loss``; only the harness's tfds/backbone/mixed precision test is
``tensorflow_only``. ``--help`` must not load TensorFlow, and no run may print TensorFlow's
native start-up lines. The VICReg-SSL run reads random Fashion-MNIST-format IDX files
written by the test: it needs no data set.
"""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import assert_no_native_noise, run_help, script_env, write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = ("examples/retrieval.py", "examples/gan_mixture.py", "examples/circle_embedding.py",
           "examples/vicreg_ssl.py", "experiments/table1.py", "experiments/gan_fig5.py",
           "experiments/all_layers.py", "experiments/proxy_anchor.py")
TIMEOUT = 300  # seconds; each quick run takes well under a minute on an idle 2-core CPU


def _run(args, cwd=ROOT, quiet=False):
    """Runs ``python *args`` as a user would (``TF_CPP_MIN_LOG_LEVEL`` unset); returns stdout.
    With `quiet`, also checks that stderr holds no TensorFlow start-up lines."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=script_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n"
        f"{proc.stderr[-4000:]}")
    if quiet:
        assert_no_native_noise(proc.stderr)
    return proc.stdout


def _numbers_after(label, text):
    """Every number printed right after `label` (e.g. 'R@1 97.3' -> [97.3])."""
    pattern = re.escape(label) + r"\s+(-?(?:\d+\.?\d*|nan|inf))"
    return [float(v) for v in re.findall(pattern, text)]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_finite_columns(rows, columns):
    assert rows
    for row in rows:
        for column in columns:
            assert math.isfinite(float(row[column])), (column, row)


def _assert_small_png(path):
    assert path.is_file(), path
    assert 0 < path.stat().st_size < 200 * 1024, (path, path.stat().st_size)


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


def test_table1_quick(tmp_path):
    """The paper harness: runs CSV, mean +- std table, plots, and --merge."""
    out = _run([EXPERIMENTS / "table1.py", "--quick", "--out", tmp_path], quiet=True)
    recalls, nmis = _numbers_after("R@1", out), _numbers_after("NMI", out)
    assert len(recalls) == len(nmis) == 4  # contrastive, npair x none, svmax
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in recalls)
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in nmis)
    assert "training on" in out  # the device line
    runs = _read_csv(tmp_path / "digits_runs.csv")
    _assert_finite_columns(runs, ["nmi", "r@1", "r@8", "map@r", "test_s_mu", "test_s_mu_upper"])
    assert {r["regularizer"] for r in runs} == {"none", "svmax"}
    table = _read_csv(tmp_path / "digits_table.csv")
    assert len(table) == 4
    assert (tmp_path / "digits_table.md").read_text().startswith("| loss |")
    _assert_small_png(tmp_path / "digits_recall_vs_lr.png")
    _assert_small_png(tmp_path / "digits_test_smu.png")
    # --merge re-summarizes earlier runs without training
    _run([EXPERIMENTS / "table1.py", "--merge", tmp_path / "digits_runs.csv", "--out",
          tmp_path / "merged"])
    assert len(_read_csv(tmp_path / "merged" / "digits_table.csv")) == 4


def test_table1_glyphs_quick(tmp_path):
    """--dataset glyphs (CJK characters in Debian's fonts; skipped without them), its cache
    under a temporary XDG_CACHE_HOME, with the paper's balanced contrastive pairs."""
    fonts = [p for p in ("/usr/share/fonts/truetype/arphic/ukai.ttc",
                         "/usr/share/fonts/truetype/arphic/uming.ttc",
                         "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
                         "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                         "/usr/share/fonts/opentype/ipafont-mincho/ipam.ttf",
                         "/usr/share/fonts/truetype/vlgothic/VL-Gothic-Regular.ttf",
                         "/usr/share/fonts/truetype/seto/setofont.ttf",
                         "/usr/share/fonts/truetype/komatuna/komatuna.ttf") if Path(p).is_file()]
    if len(fonts) < 8:
        pytest.skip("needs Debian's CJK fonts (apt-get install fonts-arphic-ukai "
                    "fonts-arphic-uming ...: keras_featreg.data.GLYPH_FONT_PACKAGES; .ci/run "
                    "installs them)")
    env = dict(script_env(), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, EXPERIMENTS / "table1.py", "--dataset", "glyphs",
                           "--quick", "--losses", "contrastive", "--contrastive-pairs",
                           "balanced", "--regularizers", "svmax",
                           "--out", tmp_path], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recalls = _numbers_after("R@1", proc.stdout)
    assert len(recalls) == 1 and all(math.isfinite(v) and 0 <= v <= 100 for v in recalls)
    runs = _read_csv(tmp_path / "glyphs_runs.csv")
    assert len(runs) == 1 and runs[0]["dataset"] == "glyphs"
    assert len(list((tmp_path / "cache" / "keras_featreg" / "glyphs").glob("*.npz"))) == 1


def test_all_layers_quick(tmp_path):
    """The all-layers study: five settings, the regularizer attached to the right layers, a
    per-layer s_mu position in [0, 1], the regularizer's penalty in the training loss, and
    --merge."""
    out = _run([EXPERIMENTS / "all_layers.py", "--quick", "--out", tmp_path], quiet=True)
    assert len(_numbers_after("R@1", out)) == 5
    runs = {r["setting"]: r for r in _read_csv(tmp_path / "all_layers_digits_runs.csv")}
    assert set(runs) == {"none", "weight_decay", "svmax_embedding", "svmax_all", "vicreg_all"}
    positions = [k for k in runs["none"] if k.startswith("pos_")]
    # digits' 8 x 8 images: one Conv2D block, the hidden Dense, the embedding Dense
    assert positions == ["pos_conv2d", "pos_dense", "pos_embedding"]
    layers = {name: int(float(r["regularized_layers"])) for name, r in runs.items()}
    assert layers == {"none": 0, "weight_decay": 0, "svmax_embedding": 1, "svmax_all": 3,
                      "vicreg_all": 3}
    _assert_finite_columns(runs.values(), ["r@1", "r@8", "nmi", "train_seconds", *positions])
    for r in runs.values():
        assert all(-1e-6 <= float(r[k]) <= 1 + 1e-6 for k in positions), r
    # bounded SVMax adds at least lambda (1 for the contrastive loss) per regularized layer
    loss = {name: float(r["final_loss"]) for name, r in runs.items()}
    assert loss["svmax_embedding"] > loss["none"] + 0.5
    assert loss["svmax_all"] > loss["svmax_embedding"] + 1.0
    _assert_small_png(tmp_path / "all_layers_digits_positions.png")
    assert (tmp_path / "all_layers_digits_table.md").read_text().startswith("| setting |")
    _run([EXPERIMENTS / "all_layers.py", "--merge", tmp_path / "all_layers_digits_runs.csv",
          "--out", tmp_path / "merged", "--tag", "m"])
    assert len(_read_csv(tmp_path / "merged" / "m_table.csv")) == 5


def test_proxy_anchor_quick(tmp_path):
    """The Table 3 analog: Proxy-Anchor (d = 512) with SVMax lambda 0, 1e-4, 1e-3; finite
    metrics, s_mu within its bounds, Delta R@1 only for lambda > 0, and --merge."""
    out = _run([EXPERIMENTS / "proxy_anchor.py", "--quick", "--out", tmp_path], quiet=True)
    assert len(_numbers_after("R@1", out)) == 3
    runs = _read_csv(tmp_path / "proxy_anchor_digits_runs.csv")
    assert [float(r["lambda"]) for r in runs] == [0.0, 1e-4, 1e-3]
    assert {int(float(r["dim"])) for r in runs} == {512}
    _assert_finite_columns(runs, ["nmi", "r@1", "r@8", "test_s_mu", "test_s_mu_upper"])
    for r in runs:
        assert float(r["test_s_mu_lower"]) - 1e-4 <= float(r["test_s_mu"]) \
            <= float(r["test_s_mu_upper"]) + 1e-4
    table = _read_csv(tmp_path / "proxy_anchor_digits_table.csv")
    assert [t["delta_r@1_mean"] == "nan" for t in table] == [True, False, False]
    _run([EXPERIMENTS / "proxy_anchor.py", "--merge", tmp_path / "proxy_anchor_digits_runs.csv",
          "--out", tmp_path / "merged", "--tag", "m"])
    assert len(_read_csv(tmp_path / "merged" / "m_table.csv")) == 3


def test_delta_table(tmp_path):
    """The side-by-side Delta R@1 table: the paper's Table 1 cells and a table1.py table's."""
    table = tmp_path / "t_table.csv"
    table.write_text(
        "dataset,loss,regularizer,lambda,lr,batch_size,seeds,r@1_mean,r@1_std,"
        "delta_r@1_mean,delta_r@1_std\n"
        "x,triplet,none,0,0.01,144,3,38.04,3.4,nan,nan\n"
        "x,triplet,svmax,0.1,0.01,144,3,80.3,2.3,42.36,4.81\n"
        "x,triplet,spreadout,1,0.01,144,3,96.5,0.4,58.46,3.04\n"
        "x,contrastive,svmax,1,0.001,144,1,50,0,-2.25,0\n")
    out = _run([EXPERIMENTS / "delta_table.py", "--table", f"ours={table}",
                "--table", f"ours, contrastive only:contrastive={table}",
                "--out", tmp_path / "d.md"])
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
             for line in out.splitlines() if line.startswith("| ")}
    assert "CUB (paper) | ours | ours, contrastive only |" in out
    # the paper's triplet lambda = 0.1 row at lr 0.01: R@1 29.34, SVMax +14.47, spread-out +14.26
    assert "| 29.3 / +14.5 / +14.3 | 38.0 ± 3.4 / +42.4 ± 4.8 / +58.5 ± 3.0 | · |" in (
        lines[("triplet", "0.01")])
    assert "| · / -2.2 / · | · / -2.2 / · |" in lines[("contrastive", "0.001")]  # one seed: no ±
    assert (tmp_path / "d.md").read_text() == out.rstrip("\n") + "\n"


def test_table1_tfds_dataset_without_tensorflow_datasets():
    """tensorflow-datasets is the [tfds] extra, not needed by the default digits run: a tfds
    --dataset without it stops at argument parsing (before TensorFlow loads), naming it."""
    code = (
        "import runpy, sys\n"
        "sys.modules['tensorflow_datasets'] = None  # as if it were not installed\n"
        f"sys.path[:0] = [{str(EXPERIMENTS)!r}, {str(EXAMPLES)!r}]\n"
        "sys.argv = ['table1.py', '--dataset', 'cars196']\n"
        f"runpy.run_path({str(EXPERIMENTS / 'table1.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=script_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert '--dataset cars196 needs tensorflow-datasets' in proc.stderr
    assert '".[tfds]"' in proc.stderr


@pytest.mark.tensorflow_only
def test_retrieval_tfds_backbone_mixed_precision(tmp_path):
    """The tfds loader path (mock data), a keras.applications backbone, mixed precision."""
    pytest.importorskip("tensorflow_datasets")
    code = (
        "import sys\n"
        "import tensorflow_datasets as tfds\n"
        f"sys.path.insert(0, {str(EXPERIMENTS)!r})\n"
        "import table1\n"
        "with tfds.testing.mock_data(num_examples=48):\n"
        "    rows = table1.main(['--dataset', 'cars196', '--quick', '--losses', 'triplet',\n"
        "                           '--regularizers', 'svmax',\n"
        "                           '--backbone', 'mobilenet_v2', '--weights', 'none',\n"
        "                           '--image-size', '32', '--mixed-precision',\n"
        f"                           '--out', {str(tmp_path)!r}])\n"
        "print('ROWS', len(rows))\n"
    )
    out = _run(["-c", code])
    assert "ROWS 1" in out
    assert "mixed_float16" in out
    runs = _read_csv(tmp_path / "cars196_runs.csv")
    _assert_finite_columns(runs, ["r@1", "test_s_mu"])


def test_table1_schedule_and_layout():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import table1 as retrieval
    finally:
        sys.path.remove(str(EXPERIMENTS))
    schedule = retrieval.ConstantThenPolynomialDecay(0.01, total_steps=100)
    values = [float(schedule(step)) for step in (0, 25, 50, 75, 100, 150)]
    assert values[0] == pytest.approx(0.01) and values[2] == pytest.approx(0.01)
    assert values[3] == pytest.approx(0.5 * (0.01 - 1e-7) + 1e-7, rel=1e-5)
    assert values[4] == pytest.approx(1e-7, rel=1e-3) and values[5] == pytest.approx(1e-7, rel=1e-3)
    restored = retrieval.ConstantThenPolynomialDecay.from_config(schedule.get_config())
    assert float(restored(75)) == pytest.approx(values[3])
    # the paper's p x l with enough classes, l grown (or b = 2p) with only 5 classes
    assert retrieval.batch_layout("triplet", 144, 100) == (24, 6)
    assert retrieval.batch_layout("contrastive", 144, 100) == (36, 4)
    assert retrieval.batch_layout("npair", 144, 100) == (72, 2)
    assert retrieval.batch_layout("contrastive", 144, 5) == (5, 28)
    assert retrieval.batch_layout("angular", 144, 5) == (5, 2)


def test_gan_mixture_quick(tmp_path):
    """The teaching script, one seed per variant: final mode metrics and the heatmaps."""
    out = _run([EXAMPLES / "gan_mixture.py", "--quick", "--unrolled-steps", 2, "--steps", 10,
                "--out", tmp_path], quiet=True)
    covered = re.findall(r"-> modes covered (\d)/8, high-quality (\d+\.\d)%", out)
    assert len(covered) == 4, out[-2000:]  # vanilla, svmax, unrolled2, unrolled2+svmax
    s_mu = _numbers_after("s_mu", out)
    assert s_mu and all(math.isfinite(v) and v > 0 for v in s_mu)
    _assert_small_png(tmp_path / "gan_heatmaps.png")


def test_gan_fig5_quick(tmp_path):
    """The Fig. 5 harness: runs CSV, mean +- std summary, heatmaps of the first seed."""
    out = _run([EXPERIMENTS / "gan_fig5.py", "--quick", "--out", tmp_path], quiet=True)
    assert re.search(r"vanilla \| \d\.\d ± \d\.\d \| \d+\.\d", out), out[-2000:]
    assert re.search(r"svmax \| \d\.\d ± \d\.\d \| \d+\.\d", out), out[-2000:]
    summary = _read_csv(tmp_path / "gan_summary.csv")
    _assert_finite_columns(summary, ["modes_mean", "high_quality_mean"])
    runs = _read_csv(tmp_path / "gan_runs.csv")
    assert {r["variant"] for r in runs} == {"vanilla", "svmax"}
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
    client = nbclient.NotebookClient(notebook, timeout=TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    streams = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if output.get("output_type") == "stream"]
    text = "\n".join(output.get("text", "") for output in streams)
    assert_no_native_noise("".join(o.get("text", "") for o in streams if o.get("name") == "stderr"))
    recalls = _numbers_after("R@1", text)
    assert len(recalls) == 2 and all(math.isfinite(v) for v in recalls), text[-2000:]
    assert len(_numbers_after("NMI", text)) == 2
