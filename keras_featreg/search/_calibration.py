"""Calibration (the distance below which the nearest item is a match) and matching."""

import dataclasses
import numbers

import numpy as np

from keras_featreg._host import check_embeddings, check_label_array

UNKNOWN = -1  # the label `match` gives a query whose nearest item is beyond the threshold


@dataclasses.dataclass
class Calibration:
    """A distance threshold and the precision / recall / F1 curve it was chosen on.

    A query is *accepted* when the distance to its nearest gallery item is ``<=`` the
    threshold, and then takes that item's label. Over a labelled calibration set:
    ``TP`` = accepted with the right label, ``FP`` = accepted with a wrong one, ``FN`` =
    rejected although the nearest label was right; precision = TP / (TP + FP), recall =
    TP / (TP + FN), F1 their harmonic mean (the "match nearest" rule of
    tensorflow-similarity's ``calibrate``).

    Attributes:
        threshold: the chosen distance threshold (in the index's metric).
        precision, recall, f1: the values at the threshold.
        target_precision: the precision asked for, or None (best F1).
        metric: the index's metric.
        thresholds, precisions, recalls, f1s: the curve, one point per distinct
            nearest distance of the calibration set, increasing thresholds.
    """

    threshold: float
    precision: float
    recall: float
    f1: float
    target_precision: object
    metric: str
    thresholds: np.ndarray
    precisions: np.ndarray
    recalls: np.ndarray
    f1s: np.ndarray

    def to_config(self):
        """A JSON-serializable dict (:meth:`from_config` reads it back exactly)."""
        out = dataclasses.asdict(self)
        for name in ("thresholds", "precisions", "recalls", "f1s"):
            out[name] = [float(v) for v in np.asarray(out[name])]
        return out

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("thresholds", "precisions", "recalls", "f1s"):
            config[name] = np.asarray(config[name], dtype=np.float64)
        return cls(**config)

    def plot(self, ax=None):
        """Precision, recall and F1 against the threshold (matplotlib), the chosen
        threshold marked. Returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.thresholds, self.precisions, label="precision")
        ax.plot(self.thresholds, self.recalls, label="recall")
        ax.plot(self.thresholds, self.f1s, label="F1")
        ax.axvline(self.threshold, color="gray", linestyle="--",
                   label=f"threshold {self.threshold:.3g}")
        ax.set_xlabel(f"distance threshold ({self.metric})")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
        return ax


def curve(distances, correct):
    """(thresholds, precisions, recalls, f1s) of the match-nearest rule, one point per
    distinct distance (every query at a distance <= the threshold is accepted)."""
    order = np.argsort(distances, kind="stable")
    d, ok = distances[order], correct[order].astype(np.int64)
    last = np.r_[d[1:] != d[:-1], True]  # the last query of each distinct distance
    tp = np.cumsum(ok)[last]
    accepted = (np.arange(d.size) + 1)[last]
    total_right = ok.sum()
    precision = tp / accepted
    recall = tp / total_right if total_right else np.zeros_like(precision, dtype=np.float64)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(precision),
                   where=denominator > 0)
    return d[last].astype(np.float64), precision, recall, f1


def calibrate(index, embeddings, labels, target_precision=None):
    """The distance threshold that reaches `target_precision`, or else the best F1.

    Each calibration embedding is searched in `index` (which must hold labels); it is
    correct when its nearest item has its label. With `target_precision`, the threshold
    is the largest one whose precision is at least the target (the most recall at that
    precision); without, the one of the best F1 (the smallest such threshold on ties).

    Args:
        index: a :class:`keras_featreg.search.Index` with labels (the gallery).
        embeddings: (n, dim) calibration embeddings, not in the gallery.
        labels: (n,) their integer labels; labels absent from the gallery are allowed
            (their queries can only be false positives: that is what "unknown" is for).
        target_precision: None or a float in (0, 1].

    Returns:
        A :class:`Calibration`.

    Raises:
        ValueError: bad input, or no threshold reaches `target_precision` (the message
            gives the best precision reached).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.search import Index, calibrate
    >>> index = Index()
    >>> index.add(np.array([[0.0], [10.0]]), labels=[0, 1])
    >>> queries = np.array([[0.5], [9.0], [4.0], [6.0]])
    >>> c = calibrate(index, queries, [0, 1, 1, 0], target_precision=1.0)
    >>> c.threshold, c.precision, c.recall
    (1.0, 1.0, 1.0)
    """
    if index.labels is None:
        raise ValueError("`index` must hold labels to calibrate on (add them with "
                         "`index.add(embeddings, labels=...)`). Received: an index without labels")
    if target_precision is not None:
        if (isinstance(target_precision, bool) or not isinstance(target_precision, numbers.Real)
                or not 0 < target_precision <= 1):
            raise ValueError("`target_precision` must be None or a number in (0, 1]. "
                             f"Received: target_precision={target_precision!r}")
        target_precision = float(target_precision)
    x = check_embeddings(embeddings, min_rows=1, dim=index.dim)
    labels = check_label_array(labels, x.shape[0], of="embeddings")
    nearest = index.search(x, k=1)
    correct = nearest.labels[:, 0] == labels
    if not correct.any():
        raise ValueError("No calibration embedding has the label of its nearest gallery item: "
                         "there is no threshold to choose (is the gallery the right one?).")
    thresholds, precisions, recalls, f1s = curve(nearest.distances[:, 0], correct)
    if target_precision is None:
        best = int(np.argmax(f1s))
    else:
        reach = np.flatnonzero(precisions >= target_precision - 1e-12)
        if reach.size == 0:
            raise ValueError(
                f"No threshold reaches target_precision={target_precision}: the best "
                f"precision on this calibration set is {precisions.max():.4f}. "
                "Received: target_precision={target_precision}"
            )
        best = int(reach[-1])
    return Calibration(
        threshold=float(thresholds[best]), precision=float(precisions[best]),
        recall=float(recalls[best]), f1=float(f1s[best]), target_precision=target_precision,
        metric=index.metric, thresholds=thresholds, precisions=precisions, recalls=recalls,
        f1s=f1s)


def match(index, queries, threshold, unknown_label=UNKNOWN):
    """The label of each query's nearest item, or `unknown_label` beyond `threshold`.

    Args:
        index: a :class:`keras_featreg.search.Index` with labels.
        queries: (n, dim) embeddings.
        threshold: a distance (a number, or a :class:`Calibration`).
        unknown_label: the label of a rejected query (default -1).

    Returns:
        ``(labels, distances)``: (n,) int64 labels and the (n,) nearest distances.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.search import Index, match
    >>> index = Index()
    >>> index.add(np.array([[0.0], [10.0]]), labels=[3, 7])
    >>> match(index, np.array([[0.5], [5.0], [9.9]]), threshold=1.0)[0].tolist()
    [3, -1, 7]
    """
    if isinstance(threshold, Calibration):
        if threshold.metric != index.metric:
            raise ValueError(f"`threshold` was calibrated with metric={threshold.metric!r}, "
                             f"the index uses metric={index.metric!r}.")
        threshold = threshold.threshold
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not np.isfinite(threshold)):
        raise ValueError("`threshold` must be a finite number or a Calibration. "
                         f"Received: threshold={threshold!r}")
    if index.labels is None:
        raise ValueError("`index` must hold labels to match against. Received: an index "
                         "without labels")
    nearest = index.search(queries, k=1)
    d = nearest.distances[:, 0]
    return np.where(d <= threshold, nearest.labels[:, 0], int(unknown_label)), d
