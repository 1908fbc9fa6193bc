"""Tests of the paper-reproduction harness (``experiments/``).

The scripts (``table1.py``, ``all_layers.py``, ``proxy_anchor.py``, ``gan_fig5.py``) run
with ``--quick`` (a few training steps on a tiny subset) in a subprocess, which inherits
``KERAS_BACKEND``; those that train are marked ``slow``. ``--help`` must not load
TensorFlow, and no run may print TensorFlow's native start-up lines. The harness parts the
scripts share (``_protocol``, ``_schedule``, ``_study``, ``_tables``) have unit tests on
hand-made rows, without training.
"""

import importlib
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import (
    SCRIPT_TIMEOUT,
    assert_finite_columns as _assert_finite_columns,
    assert_small_png as _assert_small_png,
    numbers_after as _numbers_after,
    read_csv as _read_csv,
    run_help,
    run_script as _run,
    script_env,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = ("experiments/table1.py", "experiments/gan_fig5.py", "experiments/all_layers.py",
           "experiments/proxy_anchor.py")


def _harness(name):
    """A module of ``experiments/`` (``table1``, ``_study``, ``_tables``, ...), imported."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))


# ------------------------------------------------------------------------ the scripts


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    """``--help`` exits 0 without importing TensorFlow, Keras or JAX, and prints no
    TensorFlow start-up lines."""
    out = run_help(ROOT / script)
    assert "--quick" in out and "--mixed-precision" in out


@pytest.mark.slow
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


@pytest.mark.slow
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
                          text=True, timeout=SCRIPT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recalls = _numbers_after("R@1", proc.stdout)
    assert len(recalls) == 1 and all(math.isfinite(v) and 0 <= v <= 100 for v in recalls)
    runs = _read_csv(tmp_path / "glyphs_runs.csv")
    assert len(runs) == 1 and runs[0]["dataset"] == "glyphs"
    assert len(list((tmp_path / "cache" / "keras_featreg" / "glyphs").glob("*.npz"))) == 1


@pytest.mark.slow
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


@pytest.mark.slow
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
                          text=True, timeout=SCRIPT_TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert '--dataset cars196 needs tensorflow-datasets' in proc.stderr
    assert '".[tfds]"' in proc.stderr


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_table1_tfds_backbone_mixed_precision(tmp_path):
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


@pytest.mark.slow
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


# ------------------------------------------------------------------- the harness parts


def test_schedule():
    """Constant for K/2 steps, linear decay to 1e-7 at K, constant after; serializable."""
    import keras

    schedule_cls = _harness("_schedule").ConstantThenPolynomialDecay
    schedule = schedule_cls(0.01, total_steps=100)
    values = [float(schedule(step)) for step in (0, 25, 50, 75, 100, 150)]
    assert values[0] == pytest.approx(0.01) and values[2] == pytest.approx(0.01)
    assert values[3] == pytest.approx(0.5 * (0.01 - 1e-7) + 1e-7, rel=1e-5)
    assert values[4] == pytest.approx(1e-7, rel=1e-3) and values[5] == pytest.approx(1e-7, rel=1e-3)
    restored = schedule_cls.from_config(schedule.get_config())
    assert float(restored(75)) == pytest.approx(values[3])
    # registered under the name earlier saved optimizers carry
    config = keras.saving.serialize_keras_object(schedule)
    assert config["registered_name"] == "examples>ConstantThenPolynomialDecay"
    assert float(keras.saving.deserialize_keras_object(config)(75)) == pytest.approx(values[3])
    power = schedule_cls(1.0, total_steps=10, end_learning_rate=0.0, power=2.0, hold_fraction=0.0)
    assert float(power(5)) == pytest.approx(0.25)


def test_batch_layout():
    """The paper's p x l with enough classes; l grown (or b = 2p) with only 5 classes."""
    protocol = _harness("_protocol")
    assert protocol.batch_layout("triplet", 144, 100) == (24, 6)
    assert protocol.batch_layout("contrastive", 144, 100) == (36, 4)
    assert protocol.batch_layout("npair", 144, 100) == (72, 2)
    assert protocol.batch_layout("contrastive", 144, 5) == (5, 28)
    assert protocol.batch_layout("angular", 144, 5) == (5, 2)
    assert protocol.batch_layout("triplet", 72, 100) == (12, 6)


def test_table1_loss_names_resolve_through_losses_get():
    """Every command-line loss name maps to ``keras_featreg.losses.get`` arguments that build
    the paper's loss: margins 1 / 0.2, hard triplet mining, alpha = 45 degrees; balanced
    contrastive pairs through the ``balanced_pair`` miner."""
    from keras_featreg import losses

    protocol = _harness("_protocol")
    assert set(protocol.LOSS_ARGS) == set(protocol.LOSSES) == {
        "contrastive", "triplet", "npair", "angular"}
    expected = {
        ("contrastive", "all"): (losses.ContrastiveLoss, {"margin": 1.0}),
        ("contrastive", "balanced"): (losses.ContrastiveLoss,
                                      {"margin": 1.0, "miner": "balanced_pair"}),
        ("triplet", "all"): (losses.TripletLoss, {"margin": 0.2, "mining": "hard"}),
        ("triplet", "balanced"): (losses.TripletLoss, {"margin": 0.2, "mining": "hard"}),
        ("npair", "all"): (losses.NPairLoss, {}),
        ("angular", "all"): (losses.AngularLoss, {"alpha": 45.0}),
    }
    for (name, pairs), (cls, kwargs) in expected.items():
        assert protocol.loss_args(name, pairs) == (name, kwargs)
        loss = protocol.make_loss(name, pairs)
        assert type(loss) is cls, (name, pairs)
        assert loss.get_config() == cls(**kwargs).get_config(), (name, pairs)
        assert loss.get_config() == losses.get(name, **kwargs).get_config()
    assert protocol.make_loss("triplet").margin == pytest.approx(0.2)
    assert protocol.make_loss("angular").alpha == pytest.approx(45.0)
    with pytest.raises(ValueError, match="unknown loss 'circle'"):
        protocol.make_loss("circle")


def test_table1_regularizers():
    """(regularizer, lambda, before normalization) per name: the paper's lambda per loss
    unless overridden; VICReg before the L2 normalization."""
    from keras_featreg.regularizers import SVMax, SpreadOut, VICReg

    protocol = _harness("_protocol")
    assert protocol.make_regularizer("none", "triplet") == (None, 0.0, False)
    reg, lam, before = protocol.make_regularizer("spreadout", "triplet")
    assert isinstance(reg, SpreadOut) and (lam, before) == (1.0, False)
    for loss, paper_lambda in protocol.PAPER_LAMBDA.items():
        reg, lam, before = protocol.make_regularizer("svmax", loss)
        assert isinstance(reg, SVMax) and lam == paper_lambda and not before
    assert protocol.make_regularizer("svmax", "triplet", svmax_lambda=0.5)[1] == 0.5
    reg, lam, before = protocol.make_regularizer("vicreg", "npair")
    assert isinstance(reg, VICReg) and (lam, before) == (25.0, True)
    with pytest.raises(ValueError, match="unknown regularizer"):
        protocol.make_regularizer("dropout", "npair")


def _row(loss, reg, lr, seed, r1, batch_size=144, diverged=0):
    return {"dataset": "x", "loss": loss, "regularizer": reg,
            "lambda": 0.0 if reg == "none" else 1.0,
            "lr": lr, "seed": seed, "batch_size": batch_size, "nmi": r1 / 100, "r@1": r1,
            "r@8": r1 + 10, "test_s_mu": 0.5, "test_s_mu_upper": 1.5,
            "diverged": diverged}


def test_table1_add_deltas_summarize_markdown():
    """Delta R@1 per (loss, lr, seed, batch size) against the unregularized run; mean +- std
    over seeds in the paper's order (loss, lr descending, batch, regularizer); the Markdown
    table ('-' where no value, no ± for one seed)."""
    tables = _harness("_tables")
    rows = [_row("npair", "svmax", 0.01, 0, 60.0), _row("contrastive", "svmax", 0.01, 0, 50.0),
            _row("contrastive", "none", 0.01, 0, 40.0), _row("contrastive", "svmax", 0.01, 1, 54.0),
            _row("contrastive", "none", 0.01, 1, 41.0), _row("contrastive", "none", 0.001, 0, 30.0),
            _row("contrastive", "svmax", 0.001, 0, math.nan, diverged=1)]
    tables.add_deltas(rows)
    deltas = [r["delta_r@1"] for r in rows]
    assert deltas[1:5] == [10.0, pytest.approx(math.nan, nan_ok=True), 13.0,
                           pytest.approx(math.nan, nan_ok=True)]
    assert math.isnan(deltas[0])  # no unregularized npair run
    table = tables.summarize(rows)
    assert [(t["loss"], t["regularizer"], t["lr"]) for t in table] == [
        ("contrastive", "none", 0.01), ("contrastive", "svmax", 0.01),
        ("contrastive", "none", 0.001), ("contrastive", "svmax", 0.001),
        ("npair", "svmax", 0.01)]
    svmax = table[1]
    assert svmax["seeds"] == 2 and svmax["r@1_mean"] == pytest.approx(52.0)
    assert svmax["r@1_std"] == pytest.approx(math.sqrt(8.0))
    assert svmax["delta_r@1_mean"] == pytest.approx(11.5)
    assert table[3]["diverged"] == 1 and math.isnan(table[3]["r@1_mean"])
    md = tables.markdown_table(table).splitlines()
    assert md[0] == ("| loss | regularizer (λ) | lr | b | NMI | R@1 (%) | R@8 (%) | ΔR@1 | "
                     "test s_μ (U) |")
    assert md[2] == ("| contrastive | vanilla | 0.01 | 144 | 0.405 ± 0.007 | 40.5 ± 0.7 | "
                     "50.5 ± 0.7 | - | 0.50 ± 0.00 (1.50) |")
    assert md[3].startswith(
        "| contrastive | SVMax (1) | 0.01 | 144 | 0.520 ± 0.028 | 52.0 ± 2.8 |")
    assert md[3].endswith("| 11.5 ± 2.1 | 0.50 ± 0.00 (1.50) |")
    assert md[5].startswith("| contrastive | SVMax (1) (1 diverged) | 0.001 | 144 | - | - |")
    assert md[6] == ("| npair | SVMax (1) | 0.01 | 144 | 0.600 | 60.0 | 70.0 | - | "
                     "0.50 (1.50) |")  # one seed: no ±


def test_table1_runs_csv_round_trip(tmp_path):
    """``--merge`` reads a runs CSV back: text columns as strings, counts as ints, the rest
    as floats, empty or 'nan' cells as NaN; the studies' reader keeps every number a float."""
    study, tables = _harness("_study"), _harness("_tables")
    rows = [{"dataset": "digits", "loss": "npair", "regularizer": "svmax", "lambda": 1.0,
             "lr": 0.01, "seed": 2, "batch_size": 10, "p": 5, "l": 2, "iterations": 4,
             "r@1": 97.25, "map@r": float("nan"), "diverged": 0}]
    study._common.write_csv(rows, tmp_path / "a_runs.csv")
    with open(tmp_path / "b_runs.csv", "w") as f:
        f.write("dataset,loss,regularizer,seed,r@1,diverged\ndigits,triplet,none,3,,\n")
    read = tables.read_runs([tmp_path / "a_runs.csv", tmp_path / "b_runs.csv"])
    assert [type(v) for v in read[0].values()] == [str, str, str, float, float, int, int, int,
                                                   int, int, float, float, int]
    assert {k: v for k, v in read[0].items() if k != "map@r"} == {
        k: v for k, v in rows[0].items() if k != "map@r"}
    assert math.isnan(read[0]["map@r"])
    assert read[1]["seed"] == 3 and math.isnan(read[1]["r@1"]) and math.isnan(read[1]["diverged"])
    floats = study.read_runs([tmp_path / "a_runs.csv"], ("dataset", "loss", "regularizer"))
    assert floats[0]["seed"] == 2.0 and isinstance(floats[0]["seed"], float)


def test_table1_merge(tmp_path):
    """``table1.py --merge`` without training: the runs of two CSV files re-summarized into
    the table files and plots, named after the runs' dataset without ``--tag``."""
    study, table1 = _harness("_study"), _harness("table1")
    rows = [_row("contrastive", reg, lr, seed, 40.0 + 10 * (reg == "svmax") + seed)
            for reg in ("none", "svmax") for lr in (0.01, 0.001) for seed in (0, 1)]
    study._common.write_csv(rows[:4], tmp_path / "a_runs.csv")
    study._common.write_csv(rows[4:], tmp_path / "b_runs.csv")
    merged = table1.main(["--merge", str(tmp_path / "a_runs.csv"), str(tmp_path / "b_runs.csv"),
                          "--out", str(tmp_path / "out")])
    assert len(merged) == 8 and [r["delta_r@1"] for r in merged[4:]] == [10.0] * 4
    table = _read_csv(tmp_path / "out" / "x_table.csv")
    assert [(t["regularizer"], t["lr"], t["seeds"]) for t in table] == [
        ("none", "0.01", "2"), ("svmax", "0.01", "2"), ("none", "0.001", "2"),
        ("svmax", "0.001", "2")]
    assert len(_read_csv(tmp_path / "out" / "x_runs.csv")) == 8
    assert (tmp_path / "out" / "x_table.md").read_text().startswith("| loss |")
    _assert_small_png(tmp_path / "out" / "x_recall_vs_lr.png")
    _assert_small_png(tmp_path / "out" / "x_test_smu.png")


def test_study_evaluate_rows():
    """The metric columns of a run, in the CSV's order: table1's (``full``) and the studies';
    NaN everywhere and ``diverged`` for a NaN loss or NaN embeddings."""
    import numpy as np

    study = _harness("_study")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 5)
    emb = rng.normal(size=(20, 8)) + 3.0 * np.eye(8)[labels]
    full = study.evaluate(emb, labels, 0.5, ks=(1, 2, 4, 8), full=True)
    assert list(full) == ["nmi", "map@r", "r@1", "r@2", "r@4", "r@8", "test_s_mu",
                          "test_s_mu_lower", "test_s_mu_upper", "collapsed_fraction", "diverged"]
    assert full["diverged"] == 0 and 0 <= full["r@1"] <= 100 and 0 <= full["map@r"] <= 100
    assert full["test_s_mu_lower"] <= full["test_s_mu"] <= full["test_s_mu_upper"]
    short = study.evaluate(emb, labels, 0.5)
    assert list(short) == ["nmi", "r@1", "r@8", "test_s_mu", "test_s_mu_lower",
                           "test_s_mu_upper", "diverged"]
    assert short["r@1"] == full["r@1"] and short["nmi"] == full["nmi"]
    for loss, e in ((math.nan, emb), (0.5, np.full_like(emb, np.nan))):
        diverged = study.evaluate(e, labels, loss, ks=(1, 2, 4, 8), full=True)
        assert diverged["diverged"] == 1
        assert all(math.isnan(v) for k, v in diverged.items() if k != "diverged")
    # MAP@R needs a label that occurs twice: NaN, not an error, without one
    assert math.isnan(study.evaluate(emb[:4], np.arange(4), 0.5, ks=(1,), full=True)["map@r"])


def test_study_stratified_subset():
    import numpy as np

    study = _harness("_study")
    x, y = np.arange(100)[:, None], np.repeat(np.arange(4), 25)
    xs, ys = study._stratified_subset(x, y, 20, seed=1)
    assert np.bincount(ys).tolist() == [5, 5, 5, 5] and np.all(np.diff(xs[:, 0]) > 0)
    assert study._stratified_subset(x, y, None, seed=1)[0] is x
    assert study._stratified_subset(x, y, 200, seed=1)[0] is x
