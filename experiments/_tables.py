"""``table1.py``'s results: Delta R@1 against the unregularized run, the mean +- std table over
seeds (CSV and Markdown), the plots (R@1 vs lr, paper Fig. 9; test s_mu, Fig. 6 / 15), and
the reading of earlier ``*_runs.csv`` files for ``--merge``. No Keras needed."""

import math

import _study
import numpy as np
from _protocol import LOSSES, REGULARIZERS
from _study import _common

SCRIPT = "table1"
# The runs CSV's text and integer columns (every other column is a float).
TEXT_KEYS = ("dataset", "loss", "regularizer")
INT_KEYS = ("seed", "batch_size", "p", "l", "iterations", "diverged")


def add_deltas(rows):
    """Delta R@1 against the unregularized run with the same loss, lr, seed and batch."""
    base = {(r["loss"], r["lr"], r["seed"], r["batch_size"]): r["r@1"]
            for r in rows if r["regularizer"] == "none"}
    for r in rows:
        ref = base.get((r["loss"], r["lr"], r["seed"], r["batch_size"]))
        r["delta_r@1"] = float("nan") if ref is None or r["regularizer"] == "none" else (
            r["r@1"] - ref)
    return rows


def summarize(rows):
    """Mean and std over seeds per (loss, regularizer, lr, batch size)."""
    groups = {}
    for r in rows:
        key = (r["loss"], r["regularizer"], r["lr"], r["batch_size"])
        groups.setdefault(key, []).append(r)
    order = {n: i for i, n in enumerate(LOSSES)}
    reg_order = {n: i for i, n in enumerate(REGULARIZERS)}
    table = []
    for key in sorted(groups, key=lambda k: (order[k[0]], -k[2], k[3], reg_order[k[1]])):
        runs = groups[key]
        out = {"dataset": runs[0]["dataset"], "loss": key[0], "regularizer": key[1],
               "lambda": runs[0]["lambda"], "lr": key[2], "batch_size": key[3],
               "seeds": len(runs), "diverged": sum(r["diverged"] for r in runs)}
        for metric in ("nmi", "r@1", "r@8", "delta_r@1", "test_s_mu"):
            mean, std = _common.mean_std(r[metric] for r in runs)
            out[f"{metric}_mean"], out[f"{metric}_std"] = mean, std
        out["test_s_mu_upper"] = _common.mean_std(r["test_s_mu_upper"] for r in runs)[0]
        table.append(out)
    return table


def _pm(mean, std, digits, runs=2):
    if not math.isfinite(mean):
        return "-"
    if runs <= 1:  # one seed: no spread to report
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table):
    names = {"none": "vanilla", "spreadout": "spread-out", "svmax": "SVMax", "vicreg": "VICReg"}
    lines = ["| loss | regularizer (λ) | lr | b | NMI | R@1 (%) | R@8 (%) | ΔR@1 | test s_μ (U) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        reg = names[t["regularizer"]]
        if t["regularizer"] != "none":
            reg += f" ({t['lambda']:g})"
        div = f" ({t['diverged']} diverged)" if t["diverged"] else ""
        n = t["seeds"]
        lines.append(
            f"| {t['loss']} | {reg}{div} | {t['lr']:g} | {t['batch_size']} | "
            f"{_pm(t['nmi_mean'], t['nmi_std'], 3, n)} | "
            f"{_pm(t['r@1_mean'], t['r@1_std'], 1, n)} | "
            f"{_pm(t['r@8_mean'], t['r@8_std'], 1, n)} | "
            f"{_pm(t['delta_r@1_mean'], t['delta_r@1_std'], 1, n)} | "
            f"{_pm(t['test_s_mu_mean'], t['test_s_mu_std'], 2, n)} ({t['test_s_mu_upper']:.2f}) |")
    return "\n".join(lines) + "\n"


COLORS = {"none": "k", "spreadout": "tab:blue", "svmax": "tab:red", "vicreg": "tab:green"}
STYLES = ["-", "--", ":", "-."]


def _loss_axes(table):
    plt = _common.pyplot()
    losses = [n for n in LOSSES if any(t["loss"] == n for t in table)]
    fig, axes = plt.subplots(1, len(losses), figsize=(max(10.0, 4.0 * len(losses)), 4.2),
                             squeeze=False)
    return fig, list(zip(axes[0], losses))


def _errorbar(ax, pts, **kwargs):
    xs, means, stds = (np.array(v, dtype=float) for v in zip(*sorted(pts)))
    ax.errorbar(xs, means, yerr=stds, marker="o", ms=5, capsize=3, **kwargs)


def plot_recall_vs_lr(table, path):
    """R@1 (mean +- std over seeds) against the learning rate, per loss (paper Fig. 9)."""
    fig, axes = _loss_axes(table)
    for ax, loss in axes:
        rows = [t for t in table if t["loss"] == loss]
        sizes = sorted({t["batch_size"] for t in rows}, reverse=True)
        for reg in REGULARIZERS:
            for i, b in enumerate(sizes):
                pts = [(t["lr"], t["r@1_mean"], t["r@1_std"]) for t in rows
                       if t["regularizer"] == reg and t["batch_size"] == b]
                if pts:
                    _errorbar(ax, pts, color=COLORS[reg], ls=STYLES[i % len(STYLES)],
                              label=reg if len(sizes) == 1 else f"{reg} b={b}")
        ax.set_xscale("log")
        ax.set_title(f"{loss} loss (b={'/'.join(map(str, sizes))}): R@1 vs lr", fontsize=12)
        ax.set_xlabel("learning rate", fontsize=11)
        ax.set_ylabel("R@1 (%), test classes", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def plot_test_smu(table, path):
    """s_mu of the test embeddings with/without regularizer, and its bounds (paper Fig. 6 /
    appendix Fig. 15): against the training batch size when several were run for a loss,
    else against the learning rate."""
    fig, axes = _loss_axes(table)
    for ax, loss in axes:
        rows = [t for t in table if t["loss"] == loss]
        sizes = sorted({t["batch_size"] for t in rows})
        lrs = sorted({t["lr"] for t in rows}, reverse=True)
        by_batch = len(sizes) > 1
        for reg in REGULARIZERS:
            for i, group in enumerate(lrs if by_batch else [None]):
                pts = [((t["batch_size"] if by_batch else t["lr"]), t["test_s_mu_mean"],
                        t["test_s_mu_std"]) for t in rows
                       if t["regularizer"] == reg and (group is None or t["lr"] == group)]
                if pts:
                    _errorbar(ax, pts, color=COLORS[reg], ls=STYLES[i % len(STYLES)],
                              label=reg if not by_batch or len(lrs) == 1 else f"{reg} lr={group:g}")
        upper = np.nanmax([t["test_s_mu_upper"] for t in rows])
        ax.axhline(upper, color="red", lw=1, label=f"upper bound U={upper:.2f}")
        if by_batch:
            ax.set_xticks(sizes)
            ax.set_xlabel("training batch size b", fontsize=11)
            ax.set_title(f"{loss} loss: test s_μ vs b", fontsize=12)
        else:
            ax.set_xscale("log")
            ax.set_xlabel("learning rate", fontsize=11)
            ax.set_title(f"{loss} loss (b={sizes[0]}): test s_μ", fontsize=12)
        ax.set_ylim(0, upper * 1.08)
        ax.set_ylabel("s_μ of the test embeddings", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10, loc="lower left")
    fig.tight_layout()
    return _common.save_figure(fig, path)


def read_runs(paths):
    """Rows of earlier ``*_runs.csv`` files, numbers converted back."""
    return _study.read_runs(paths, TEXT_KEYS, INT_KEYS)


def write_results(rows, prefix):
    """Delta R@1, then ``<prefix>_runs.csv``, ``_table.csv``, ``_table.md`` and the plots."""
    add_deltas(rows)
    table = summarize(rows)
    _study.write_tables(rows, table, markdown_table(table), prefix)
    plot_recall_vs_lr(table, prefix + "_recall_vs_lr.png")
    plot_test_smu(table, prefix + "_test_smu.png")
    print(f"[{SCRIPT}] wrote {prefix}_runs.csv, {prefix}_table.csv, {prefix}_table.md")
    return table
