"""Paper reproduction harness: Table 1 / Fig. 6, 9, 15 of the SVMax paper (Sec. 4.1).

(The teaching version, one short script that reads top to bottom, is
``examples/retrieval.py``; this one adds the sweeps, other datasets, backbones, the
distributed hook, CSV merging, tables and plots.)

Trains an L2-normalized d=128 embedding with a ranking loss (contrastive, hard triplet,
N-pair, angular) with and without an embedding regularizer (spread-out, SVMax, VICReg) over
a grid of learning rates and seeds, following the paper's protocol:

* p x l class-balanced batches per loss (triplet 24 x 6, N-pair/angular 72 x 2, contrastive
  36 x 4; with fewer training classes than p, all classes are used and l grows to keep the
  batch size, except for N-pair/angular whose batches must hold every class exactly twice);
* SGD with momentum 0.9, the learning rate fixed for K/2 iterations then decayed
  polynomially to 1e-7 at iteration K;
* the paper's SVMax lambda per loss (contrastive 1, N-pair 1, triplet 0.1, angular 2);
* evaluation on test classes disjoint from the training classes: NMI, Recall@{1,2,4,8},
  and the mean singular value s_mu of the test embeddings with its bounds.

Outputs (in --out): ``<dataset>_runs.csv`` (one row per run), ``<dataset>_table.csv`` and
``<dataset>_table.md`` (mean +- std over seeds, Delta R@1 against the unregularized run of
the same loss / lr / seed / batch size), ``<dataset>_recall_vs_lr.png`` (paper Fig. 9) and
``<dataset>_test_smu.png`` (test s_mu per training batch size with its upper bound,
paper Fig. 6 / appendix Fig. 15).

Examples::

    python experiments/table1.py                                  # digits, a few minutes
    python experiments/table1.py --dataset fashion_mnist --seeds 0 1 2
    python experiments/table1.py --dataset glyphs    # 200 / 200 CJK characters, Debian fonts
    python experiments/table1.py --losses contrastive --regularizers none svmax \\
        --batch-sizes 72 144 --lrs 0.01
    python experiments/table1.py --dataset cars196 --backbone resnet50 --image-size 224
"""

import importlib.util
import os
import sys
import time

# The harness parts (private modules next to this script): _protocol (losses, regularizers,
# batch layout), _study (data, fit, evaluation, CSV merging), _schedule, _models, _training
# (the grid of runs) and _tables (tables and plots). This script: the command line, main.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _study  # noqa: E402,I001  (no Keras yet: --help stays fast)
from _protocol import BACKBONES, LOSSES, REGULARIZERS  # noqa: E402
from _study import DATASET_DEFAULTS, DATASETS, TFDS_DATASETS, _common  # noqa: E402

SCRIPT = "table1"


def parse_args(argv=None):
    parser = _study.doc_parser(__doc__)
    parser.add_argument("--dataset", choices=DATASETS, default="digits",
                        help="digits: scikit-learn's 8x8 digits, classes 0-4 train / 5-9 test; "
                             "fashion_mnist: Debian's IDX files, classes 0-4 / 5-9; glyphs: "
                             "CJK characters in Debian's CJK fonts (keras_featreg.data."
                             "load_glyphs_split), --glyph-classes / 2 train, the rest test; "
                             "the tfds "
                             "datasets need a network and tensorflow-datasets (the [tfds] extra) "
                             "(default: %(default)s)")
    parser.add_argument("--glyph-classes", type=int, default=None,
                        help="--dataset glyphs: number of characters, half of them training "
                             "classes (default: 400; --quick: 40)")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=None,
                        help="ranking losses (default: all four; --quick: contrastive npair)")
    parser.add_argument("--contrastive-pairs", choices=("all", "balanced"), default="all",
                        help="contrastive loss averaged over all b(b-1)/2 pairs (default) or over "
                             "the paper's balanced pairs: b/2 hardest positive + b/2 hardest "
                             "negative pairs (72 + 72 of a 36 x 4 batch; "
                             "keras_featreg.miners.BalancedPairMiner)")
    parser.add_argument("--regularizers", nargs="+", choices=REGULARIZERS, default=None,
                        help="default: none spreadout svmax")
    parser.add_argument("--lrs", nargs="+", type=float, default=None,
                        help="learning rates (default: 0.01 0.001 0.0001)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds, one run each (default: the --seed value)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="K training iterations per run (lr fixed for K/2, then decayed "
                             "to 1e-7); default per dataset: digits 300, fashion_mnist 600, "
                             "glyphs 1000, "
                             "CUB/CARS 5000, SOP 20000 (the paper's)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[144],
                        help="target batch sizes b (the paper: 144); p x l per loss, see "
                             "batch_layout() (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension d")
    parser.add_argument("--svmax-lambda", type=float, default=None,
                        help="override the paper's per-loss SVMax lambda")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default=None,
                        help="a keras.applications backbone instead of the small CNN")
    parser.add_argument("--weights", choices=("auto", "imagenet", "none"), default="auto",
                        help="backbone weights: auto = ImageNet when downloadable, else random")
    parser.add_argument("--image-size", type=int, default=None,
                        help="backbone input size (default: 32 for digits/fashion_mnist, 224 "
                             "for the tfds datasets)")
    parser.add_argument("--width", type=int, default=32,
                        help="filters of the small CNN's first conv layer (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=256,
                        help="units of the small CNN's hidden Dense layer (default: %(default)s)")
    parser.add_argument("--input-pool", type=int, default=1,
                        help="average-pool the input images by this factor first (small CNN; "
                             "2 turns 28x28 into 14x14, 4x cheaper)")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="stratified subset of the training split (default: all)")
    parser.add_argument("--test-samples", type=int, default=None,
                        help="stratified subset of the test split (default: fashion_mnist "
                             "5000, else all)")
    parser.add_argument("--log-every", type=int, default=100, help="iterations per log line")
    parser.add_argument("--jit-compile", action="store_true",
                        help="force XLA (default: Keras 'auto', i.e. XLA on GPU only)")
    parser.add_argument("--tag", default=None, help="output file prefix (default: dataset)")
    parser.add_argument("--distributed", action="store_true",
                        help="TensorFlow only: train under tf.distribute.MirroredStrategy (all "
                             "visible GPUs, else the CPU) with the regularizer's statistics "
                             "gathered over the global batch (cross_replica=True)")
    parser.add_argument("--merge", nargs="+", metavar="RUNS_CSV", default=None,
                        help="train nothing: merge *_runs.csv files of earlier (e.g. parallel) "
                             "invocations and write the table and plots under --out/--tag")
    _common.add_common_args(parser, default_out=os.path.join("runs", "table1"))
    args = parser.parse_args(argv)
    if (args.dataset in TFDS_DATASETS and args.merge is None
            and importlib.util.find_spec("tensorflow_datasets") is None):
        parser.error(f"--dataset {args.dataset} needs tensorflow-datasets, which is not "
                     'installed: pip install -e ".[tfds]" (or pip install tensorflow-datasets)')

    defaults = DATASET_DEFAULTS[args.dataset]
    if args.weights == "none":
        args.weights = None
    if args.image_size is None:
        args.image_size = defaults["image_size"]
    if args.test_samples is None:
        args.test_samples = defaults["test_samples"]
    if args.quick:
        args.iterations = args.iterations or 4
        args.log_every = 2
        args.test_samples = min(args.test_samples or 300, 300)
        args.train_samples = args.train_samples or 1000
        args.regularizers = args.regularizers or ["none", "svmax"]
        args.lrs = args.lrs or [0.01]
        args.losses = args.losses or ["contrastive", "npair"]
        args.glyph_classes = args.glyph_classes or 40
    args.glyph_classes = args.glyph_classes or 400
    if args.glyph_classes < 2:
        parser.error(f"--glyph-classes must be >= 2, got {args.glyph_classes}")
    args.iterations = args.iterations or defaults["iterations"]
    args.losses = args.losses or list(LOSSES)
    args.regularizers = args.regularizers or ["none", "spreadout", "svmax"]
    args.lrs = args.lrs or [1e-2, 1e-3, 1e-4]
    args.seeds = args.seeds if args.seeds is not None else [args.seed]
    args.tag_given = args.tag is not None
    args.tag = args.tag or args.dataset
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_common.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import numpy as np  # noqa: E402
from _tables import read_runs, write_results  # noqa: E402
from _training import distribution_strategy, run_grid  # noqa: E402


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        os.makedirs(args.out, exist_ok=True)
        rows = read_runs(args.merge)
        tag = args.tag if args.tag_given else rows[0]["dataset"]
        write_results(rows, os.path.join(args.out, tag))
        return rows
    out = _common.setup(args, SCRIPT)
    _common.mixed_precision_note(args)
    strategy = distribution_strategy(args, SCRIPT)  # DISTRIBUTED TRAINING HOOK: --distributed

    t0 = time.perf_counter()
    train, test, input_scale = _study.load_data(args)
    print(f"[{SCRIPT}] {args.dataset}: train {len(train[1])} images of classes "
          f"{np.unique(train[1]).tolist()[:10]}{'...' if len(np.unique(train[1])) > 10 else ''}, "
          f"test {len(test[1])} images of {len(np.unique(test[1]))} disjoint classes, "
          f"input {train[0].shape[1:]} ({time.perf_counter() - t0:.1f}s)")
    model_desc = args.backbone or (
        f"small CNN (width {args.width}, hidden {args.hidden}, input pool {args.input_pool})")
    print(f"[{SCRIPT}] model: {model_desc} -> Dense({args.dim}) -> L2 norm; SGD momentum 0.9, "
          f"K={args.iterations} (lr fixed K/2, then polynomial decay to 1e-7)")

    rows = run_grid(args, train, test, input_scale, strategy)
    write_results(rows, os.path.join(out, args.tag))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
