"""Search what you trained: index a gallery, look up queries, calibrate, match, serve.

Reads top to bottom, offline on scikit-learn's 8x8 digits: train an embedding on digits
0-6 (triplet loss + SVMax); index a gallery of them; look up held-out queries and draw
each with its nearest neighbours (green: same digit, red: not); calibrate the distance
threshold that reaches 95% precision on held-out digits 0-6 plus digit 7 (a class the
gallery lacks, so accepting one is a false match); match queries of digits 8 and 9, never
seen at all, which should come out "unknown" (-1); save the model, index and threshold as one bundle, load it
back and query it with raw images.
"""

import argparse
import os
import sys

import _common  # noqa: I001  (sets TF_CPP_MIN_LOG_LEVEL and the Agg backend first)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--k", type=int, default=5, help="neighbours shown per query")
    parser.add_argument("--precision", type=float, default=0.95, help="calibration target")
    _common.add_common_args(parser, default_out=os.path.join("runs", "search"))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    return args


if __name__ == "__main__":
    ARGS = parse_args(sys.argv[1:])
    _common.import_keras()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_featreg import SVMax  # noqa: E402
from keras_featreg.data import class_balanced_dataset, load_digits_split  # noqa: E402
from keras_featreg.losses import TripletLoss  # noqa: E402
from keras_featreg.search import Index, SearchBundle, calibrate, match  # noqa: E402

KNOWN = range(7)  # digit 7 only appears in the calibration set, 8 and 9 only as queries


def split(x, y, seed):
    """Known digits: half gallery, a quarter calibration, a quarter queries."""
    order = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(order, [len(y) // 2, 3 * len(y) // 4])
    return [(x[p], y[p]) for p in parts]


def build_model(input_shape):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(x))
    x = keras.layers.Dense(32, activity_regularizer=SVMax(0.1))(x)
    return keras.Model(inputs, keras.layers.UnitNormalization()(x))


def show_neighbours(queries, query_labels, result, gallery_images, path, rows=6):
    """Each row: a query, then its k nearest gallery images (green: same label, red: not)."""
    k = result.indices.shape[1]
    fig, axes = _common.pyplot().subplots(rows, k + 1, figsize=(1.2 * (k + 1), 1.3 * rows))
    for r in range(rows):
        axes[r, 0].imshow(queries[r, ..., 0], cmap="gray")
        axes[r, 0].set_title(f"query {query_labels[r]}", fontsize=8)
        for c in range(k):
            ax = axes[r, c + 1]
            ax.imshow(gallery_images[result.indices[r, c], ..., 0], cmap="gray")
            right = result.labels[r, c] == query_labels[r]
            ax.set_title(f"{result.distances[r, c]:.2f}", fontsize=8,
                         color="green" if right else "red")
            for side in ax.spines.values():
                side.set(color="green" if right else "red", linewidth=2)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _common.save_figure(fig, path)


def main(args):
    out = _common.setup(args, "search")
    (x_known, y_known), (x_new, y_new) = load_digits_split(train_classes=KNOWN)
    (x_gal, y_gal), (x_cal, y_cal), (x_q, y_q) = split(x_known, y_known, args.seed)
    sevens = y_new == 7
    x_cal, y_cal = np.concatenate([x_cal, x_new[sevens]]), np.concatenate([y_cal, y_new[sevens]])
    x_new, y_new = x_new[~sevens], y_new[~sevens]

    # 1. Train an embedding on the gallery's images (class-balanced 7 x 16 batches).
    model = build_model(x_gal.shape[1:])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletLoss(margin=0.2))
    batches = class_balanced_dataset(x_gal, y_gal, 7, 16, seed=args.seed, replace=True)
    model.fit(batches, steps_per_epoch=50, epochs=args.epochs, shuffle=False, verbose=0)

    # 2. Index the gallery; look up the queries.
    index = Index(metric="cosine")
    index.add(model.predict(x_gal, verbose=0), labels=y_gal)
    result = index.search(model.predict(x_q, verbose=0), k=args.k)
    print(f"gallery {len(index)} items; precision@1 of {len(y_q)} queries: "
          f"{np.mean(result.labels[:, 0] == y_q):.3f}")
    show_neighbours(x_q, y_q, result, x_gal, os.path.join(out, "neighbours.png"))

    # 3. Calibrate the threshold of the target precision, then match known and new digits.
    calibration = calibrate(index, model.predict(x_cal, verbose=0), y_cal,
                            target_precision=args.precision)
    print(f"threshold {calibration.threshold:.4f} (cosine distance): precision "
          f"{calibration.precision:.3f}, recall {calibration.recall:.3f} on calibration")
    fig = calibration.plot().figure
    _common.save_figure(fig, os.path.join(out, "calibration.png"))
    known, _ = match(index, model.predict(x_q, verbose=0), calibration)
    unknown, _ = match(index, model.predict(x_new, verbose=0), calibration)
    accepted = known != -1
    print(f"known digits: {accepted.mean():.3f} matched, {np.mean(known[accepted] == y_q[accepted]):.3f} "
          f"of them right; new digits 8, 9: {np.mean(unknown == -1):.3f} rejected as unknown")

    # 4. Save model + index + threshold as one bundle, load it, query it with raw images.
    path = os.path.join(out, "digits_bundle")
    SearchBundle(model, index, calibration).save(path, overwrite=True)
    bundle = SearchBundle.load(path)
    labels, distances = bundle.match(x_new[:5])
    print(f"reloaded bundle from {path}: digits {y_new[:5].tolist()} -> {labels.tolist()}")
    return {"precision@1": float(np.mean(result.labels[:, 0] == y_q)),
            "unknown_rejected": float(np.mean(unknown == -1))}


if __name__ == "__main__":
    main(ARGS)
