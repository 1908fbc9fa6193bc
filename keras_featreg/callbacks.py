"""Keras callbacks that evaluate held-out embeddings during `model.fit`.

* `RetrievalEvaluation`: Recall@K, NMI and MAP@R (:mod:`keras_featreg.evaluation`).
* `SpectrumMonitor`: s_mu, its bounds and collapse statistics
  (:mod:`keras_featreg.metrics`).

Both write their values into the epoch ``logs``, so ``History`` and callbacks listed
after them (TensorBoard, CSVLogger, EarlyStopping, ModelCheckpoint) see them.
"""

import numbers

import keras
import numpy as np  # noqa: F401  (the docstring examples use it)

from keras_featreg import _utils
from keras_featreg.evaluation._checks import check_ks, check_label_array, ranking_of
from keras_featreg.evaluation._extract import embed, is_tf_dataset
from keras_featreg.evaluation._report import evaluate_retrieval
from keras_featreg.metrics import spectrum_statistics

__all__ = ["RetrievalEvaluation", "SpectrumMonitor"]


class RetrievalEvaluation(keras.callbacks.Callback):
    """Keras callback that logs Recall@K, NMI and MAP@R on held-out data each epoch.

    At the end of every `every`-th epoch (and of the last one) it embeds `x` with
    the model, computes the metrics and writes them into the epoch ``logs`` as
    ``{prefix}recall@1``, ..., ``{prefix}nmi``, ``{prefix}map@r``. Keras passes one
    shared ``logs`` dict to the callbacks in list order and appends its `History`
    (and progress bar) after the user's callbacks, so the values reach
    ``model.fit(...).history`` and the progress bar. Put this callback *before*
    callbacks that read them (TensorBoard, CSVLogger, EarlyStopping,
    ModelCheckpoint) in the `callbacks` list. On skipped epochs nothing is logged,
    so these History lists are shorter than the others when ``every > 1``; the
    callback also keeps every result in ``self.results`` (``{epoch: {...}}``).

    Args:
        x: evaluation inputs (array, finite batched tf.data.Dataset of (x, y), or
            iterable of batches; see `embed`). Use test classes disjoint from the
            training classes for the open-set protocol.
        y: labels when `x` is an array; None when `x` yields (x, y) batches.
        ks: the K values of Recall@K.
        every: evaluate every `every` epochs (>= 1).
        nmi: log NMI (K-means + geometric NMI).
        map_at_r: log MAP@R.
        prefix: prefix of the log keys.
        batch_size: inference batch size for array inputs.
        metric: a :mod:`keras_featreg.distances` name or object (``"euclidean"``,
            ``"cosine"``, ``"dot_product"``, ...).
        embedding_model: model producing the embeddings, when it is not the trained
            model itself (e.g. a sub-model sharing its layers). Default: the model.
        seed: K-means seed for NMI.
        verbose: 1 prints a progress bar while embedding, 0 is silent.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.random.rand(20, 4), np.arange(20) % 2
    >>> cb = RetrievalEvaluation(x, y, ks=(1,), nmi=False, map_at_r=False)
    >>> h = model.fit(x, np.zeros((20, 2)), epochs=1, callbacks=[cb], verbose=0)
    >>> "val_recall@1" in h.history
    True
    """

    def __init__(
        self,
        x,
        y=None,
        ks=(1, 2, 4, 8),
        every=1,
        nmi=True,
        map_at_r=True,
        prefix="val_",
        batch_size=256,
        metric="euclidean",
        embedding_model=None,
        seed=0,
        verbose=0,
    ):
        super().__init__()
        ranking_of(metric)  # checks `metric` now
        self.every = _utils.check_int("every", every)
        self.batch_size = _utils.check_int("batch_size", batch_size)
        if y is None:
            self.data = x
        elif is_tf_dataset(x) or not hasattr(keras.tree.flatten(x)[0], "__len__"):
            raise ValueError(
                "`y` must be None when `x` is a dataset or an iterable yielding (x, y) "
                f"batches. Received x of type {type(x).__name__} and y."
            )
        else:
            n = len(keras.tree.flatten(x)[0])
            y = check_label_array(y, n, name="y")
            self.data = (x, y)
        self.ks = ks if isinstance(ks, numbers.Integral) else tuple(ks)
        check_ks(self.ks, 2**62)  # type/positivity checks now; k < n at first use
        self.compute_nmi = _utils.check_bool("nmi", nmi)
        self.compute_map_at_r = _utils.check_bool("map_at_r", map_at_r)
        self.prefix = str(prefix)
        self.metric = metric
        self.embedding_model = embedding_model
        self.seed = seed
        self.verbose = verbose
        self.results = {}

    def _due(self, epoch):
        last = self.params.get("epochs") if self.params else None
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def evaluate(self):
        """Embeds the evaluation data and returns the metrics dict (with prefix)."""
        model = self.embedding_model if self.embedding_model is not None else self.model
        out = embed(model, self.data, batch_size=self.batch_size, verbose=self.verbose)
        if not isinstance(out, tuple):
            raise ValueError(
                "RetrievalEvaluation needs labels: pass `y`, or data that yields "
                "(x, y) batches."
            )
        embeddings, labels = out
        return evaluate_retrieval(
            embeddings,
            labels,
            ks=self.ks,
            nmi=self.compute_nmi,
            map_at_r=self.compute_map_at_r,
            metric=self.metric,
            seed=self.seed,
            prefix=self.prefix,
        )

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        results = self.evaluate()
        self.results[epoch] = results
        if logs is not None:
            logs.update(results)


class SpectrumMonitor(keras.callbacks.Callback):
    """Logs ``s_mu``, its bounds and collapse statistics of held-out embeddings each epoch.

    The values go into the epoch ``logs`` (keys ``{prefix}s_mu``, ``{prefix}s_mu_lower``,
    ``{prefix}s_mu_upper``, ``{prefix}s_mu_position``, ``{prefix}collapsed_fraction``,
    ``{prefix}mean_std``), so ``History`` records them and a ``keras.callbacks.TensorBoard``
    placed *after* this callback in the ``callbacks`` list writes them.

    Args:
        x: held-out inputs (array or anything ``model.predict`` takes); evaluated as one
            embedding matrix, so keep it to the batch size you want ``s_mu`` for (the paper's
            Fig. 6 uses the whole test split).
        embedding_model: model producing the embeddings (default: the trained model).
        normalize: L2-normalize rows before measuring.
        every: log every ``every`` epochs.
        prefix: key prefix.
        threshold: collapse threshold, see :func:`keras_featreg.metrics.collapse_statistics`.
        batch_size: ``predict`` batch size.
    """

    KEYS = ("s_mu", "s_mu_lower", "s_mu_upper", "s_mu_position", "collapsed_fraction", "mean_std")

    def __init__(self, x, embedding_model=None, normalize=True, every=1, prefix="val_",
                 threshold=0.01, batch_size=256):
        super().__init__()
        self.x = x
        self.embedding_model = embedding_model
        self.normalize = _utils.check_bool("normalize", normalize)
        self.every = _utils.check_int("every", every)
        self.prefix = str(prefix)
        self.threshold = _utils.check_number("threshold", threshold, minimum=0.0)
        self.batch_size = _utils.check_int("batch_size", batch_size)
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        model = self.embedding_model or self.model
        emb = model.predict(self.x, batch_size=self.batch_size, verbose=0)
        stats = spectrum_statistics(emb, normalize=self.normalize, threshold=self.threshold)
        self.history.append({"epoch": epoch, **stats})
        if logs is not None:
            for key in self.KEYS:
                logs[self.prefix + key] = stats[key]
