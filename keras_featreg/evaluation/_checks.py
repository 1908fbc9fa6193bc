"""Argument checks shared by the evaluation functions and the retrieval callback."""

import numbers
import os

import keras
import numpy as np

from keras_featreg import distances as distances_lib
from keras_featreg._utils import check_int
from keras_featreg.ops.labels import check_labels


def ranking_of(metric):
    """The ranking of a :mod:`keras_featreg.distances` name or object (its
    ``evaluation_metric``: ``"euclidean"``, ``"cosine"`` or ``"dot_product"``): the
    losses' distances and their one table of names serve the evaluation too."""
    distance = distances_lib.get(metric, arg="metric")
    if distance is None or distance.evaluation_metric is None:
        raise ValueError(
            f"`metric` must be one of {list(distances_lib.NAMES)} or a distance with an "
            f"equivalent ranking. Received: metric={metric!r}"
        )
    return distance.evaluation_metric


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _check_embeddings(embeddings, name="embeddings"):
    """Returns `embeddings` as a finite float32/float64 NumPy matrix of shape (n, d)."""
    if hasattr(embeddings, "numpy") or not isinstance(embeddings, np.ndarray):
        embeddings = keras.ops.convert_to_numpy(embeddings)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(
            f"`{name}` must have rank 2, shape (num_samples, dim). "
            f"Received: {name}.shape={embeddings.shape}"
        )
    if embeddings.dtype.kind not in "fiub":
        raise ValueError(
            f"`{name}` must be numeric. Received: {name}.dtype={embeddings.dtype}"
        )
    dtype = np.float64 if embeddings.dtype == np.float64 else np.float32
    embeddings = np.asarray(embeddings, dtype=dtype)
    if embeddings.shape[0] < 2:
        raise ValueError(
            f"`{name}` needs at least 2 samples. Received: {name}.shape={embeddings.shape}"
        )
    if not np.all(np.isfinite(embeddings)):
        bad = int(np.count_nonzero(~np.isfinite(embeddings).all(axis=1)))
        raise ValueError(f"`{name}` contains NaN or Inf values (in {bad} rows).")
    return embeddings


def check_label_array(labels, num_samples, name="labels"):
    """Returns `labels` as a 1-D NumPy array of length `num_samples`
    (:func:`keras_featreg.ops.labels.check_labels`: integer-valued, one per sample)."""
    if not isinstance(labels, np.ndarray) and hasattr(labels, "shape"):
        labels = keras.ops.convert_to_numpy(labels)  # a backend tensor
    labels = np.asarray(check_labels(np.asarray(labels), name=name))
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"`embeddings` and `{name}` must have the same length. Received: "
            f"len(embeddings)={num_samples}, len({name})={labels.shape[0]}"
        )
    return labels


def check_ks(ks, num_samples):
    """Returns `ks` as a sorted tuple of distinct ints in [1, num_samples - 1]."""
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    ks = tuple(ks)
    if not ks:
        raise ValueError(f"`ks` must contain at least one value. Received: ks={ks}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"Every k in `ks` must be an integer. Received: ks={ks}")
        if k < 1:
            raise ValueError(f"Every k in `ks` must be >= 1. Received: ks={ks}")
        if k >= num_samples:
            raise ValueError(
                f"Every k in `ks` must be < the number of samples ({num_samples}): a "
                f"query has only {num_samples - 1} neighbours. Received: ks={ks}"
            )
    return tuple(sorted(set(int(k) for k in ks)))


def _check_chunk_size(chunk_size):
    return check_int("chunk_size", chunk_size)


def _num_threads(num_threads):
    if num_threads is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, 8))
    return check_int("num_threads", num_threads)
