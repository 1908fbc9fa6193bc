"""Side by side: the regularizers' Delta R@1 in the SVMax paper's Table 1 (CUB-200) and in
``table1.py`` tables of ours.

Reads ``*_table.csv`` files written by ``table1.py`` (``--table LABEL=PATH``, one column
per label) and prints a Markdown table: one row per ranking loss and learning rate, one
column per source, each cell "vanilla R@1 / SVMax Delta R@1 / spread-out Delta R@1" (mean ±
std over seeds). The paper's numbers are transcribed from its Table 1 (GoogLeNet on
CUB-200-2011, b = 144, d = 128, one run each; triplet: its lambda = 0.1 row).

Example::

    python experiments/delta_table.py \\
        --table "Fashion-MNIST=results/fashion_mnist_table.csv" \\
        --table "glyphs=results/glyphs/glyphs_table1_table.csv" \\
        --out results/glyphs/delta_r1.md
"""

import argparse
import csv
import math
import sys

# The SVMax paper, Table 1 (CUB-200-2011): (loss, regularizer, lr) -> (R@1, Delta R@1).
# Triplet: the paper's lambda = 0.1 row (table1.py's default for the triplet loss).
PAPER_CUB = {
    ("contrastive", "none", 0.01): (25.73, None), ("contrastive", "none", 0.001): (28.68, None),
    ("contrastive", "none", 0.0001): (24.49, None),
    ("contrastive", "spreadout", 0.01): (24.54, -1.18),
    ("contrastive", "spreadout", 0.001): (32.12, 3.44),
    ("contrastive", "spreadout", 0.0001): (31.85, 7.36),
    ("contrastive", "svmax", 0.01): (41.26, 15.53), ("contrastive", "svmax", 0.001): (43.11, 14.43),
    ("contrastive", "svmax", 0.0001): (29.56, 5.06),
    ("triplet", "none", 0.01): (29.34, None), ("triplet", "none", 0.001): (28.88, None),
    ("triplet", "none", 0.0001): (24.86, None),
    ("triplet", "spreadout", 0.01): (43.60, 14.26), ("triplet", "spreadout", 0.001): (44.02, 15.14),
    ("triplet", "spreadout", 0.0001): (28.33, 3.46),
    ("triplet", "svmax", 0.01): (43.80, 14.47), ("triplet", "svmax", 0.001): (43.89, 15.01),
    ("triplet", "svmax", 0.0001): (28.22, 3.36),
    ("npair", "none", 0.01): (18.96, None), ("npair", "none", 0.001): (27.65, None),
    ("npair", "none", 0.0001): (31.41, None),
    ("npair", "spreadout", 0.01): (20.64, 1.69), ("npair", "spreadout", 0.001): (32.46, 4.81),
    ("npair", "spreadout", 0.0001): (33.39, 1.98),
    ("npair", "svmax", 0.01): (34.62, 15.67), ("npair", "svmax", 0.001): (43.79, 16.14),
    ("npair", "svmax", 0.0001): (34.13, 2.72),
    ("angular", "none", 0.01): (28.54, None), ("angular", "none", 0.001): (38.94, None),
    ("angular", "none", 0.0001): (41.80, None),
    ("angular", "spreadout", 0.01): (28.29, -0.25), ("angular", "spreadout", 0.001): (38.96, 0.02),
    ("angular", "spreadout", 0.0001): (41.81, 0.02),
    ("angular", "svmax", 0.01): (32.88, 4.34), ("angular", "svmax", 0.001): (41.29, 2.35),
    ("angular", "svmax", 0.0001): (42.00, 0.20),
}
LOSSES = ("contrastive", "triplet", "npair", "angular")
REGULARIZERS = ("none", "spreadout", "svmax")
LRS = (0.01, 0.001, 0.0001)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--table", action="append", default=[], metavar="LABEL=PATH",
                        help="a table1.py *_table.csv and its column label (repeatable); a "
                             "LOSS:NAME suffix of LABEL, e.g. 'glyphs, 72+72 pairs:contrastive', "
                             "keeps only that loss")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    for item in args.table:
        if "=" not in item:
            parser.error(f"--table expects LABEL=PATH, got {item!r}")
    return args


def read_table(path, only_loss=None):
    """{(loss, regularizer, lr): (mean, std, vanilla R@1 mean, seeds)} of a table CSV."""
    cells = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if only_loss and row["loss"] != only_loss:
                continue
            key = (row["loss"], row["regularizer"], float(row["lr"]))
            if row["regularizer"] == "none":
                cells[key] = (float(row["r@1_mean"]), float(row["r@1_std"]), int(row["seeds"]))
            else:
                cells[key] = (float(row["delta_r@1_mean"]), float(row["delta_r@1_std"]),
                              int(row["seeds"]))
    return cells


def _number(value, signed):
    """'+1.2 ± 0.3' (std only over several seeds), '-' for NaN, '·' when absent."""
    if value is None:
        return "·"
    mean, std, seeds = value
    if not math.isfinite(mean):
        return "-"
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    if std is not None and seeds > 1 and math.isfinite(std):
        text += f" ± {std:.1f}"
    return text


def markdown(sources):
    """Rows: loss x lr; per source one cell 'vanilla R@1 | SVMax ΔR@1 | spread-out ΔR@1'."""
    header = ["loss", "lr"] + [label for label, _ in sources]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for loss in LOSSES:
        for lr in LRS:
            cells = []
            for _, table in sources:
                parts = [_number(table.get((loss, "none", lr)), signed=False),
                         _number(table.get((loss, "svmax", lr)), signed=True),
                         _number(table.get((loss, "spreadout", lr)), signed=True)]
                cells.append(" / ".join(parts) if any(p != "·" for p in parts) else "·")
            if all(c == "·" for c in cells[1:]) and len(cells) > 1:
                continue
            lines.append(f"| {loss} | {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    paper = {key: ((r1, None, 1) if delta is None else (delta, None, 1))
             for key, (r1, delta) in PAPER_CUB.items()}
    sources = [("CUB (paper)", paper)]
    for item in args.table:
        label, path = item.split("=", 1)
        label, _, only = label.partition(":")
        sources.append((label, read_table(path, only or None)))
    md = markdown(sources)
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    return md


if __name__ == "__main__":
    main(sys.argv[1:])
