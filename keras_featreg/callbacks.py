"""Keras callbacks that evaluate held-out embeddings during `model.fit`.

* `RetrievalEvaluation`: Recall@K, NMI and MAP@R (:mod:`keras_featreg.evaluation`).
* `SpectrumMonitor`: s_mu, its bounds and collapse statistics
  (:mod:`keras_featreg.metrics`).
* `CollapseMonitor`: RankMe, alpha-ReQ, LiDAR, participation ratio and collapsed dimensions
  (:func:`keras_featreg.metrics.collapse_measures`), with EarlyStopping-like stopping.

Both write their values into the epoch ``logs``, so ``History`` and callbacks listed
after them (TensorBoard, CSVLogger, EarlyStopping, ModelCheckpoint) see them.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_featreg import _utils
from keras_featreg._host import check_label_array, ranking_of
from keras_featreg.evaluation._checks import check_ks
from keras_featreg.evaluation._extract import embed, is_tf_dataset
from keras_featreg.evaluation._report import evaluate_retrieval
from keras_featreg.metrics import MEASURES, collapse_measures, spectrum_statistics

__all__ = ["CollapseMonitor", "RetrievalEvaluation", "SpectrumMonitor"]


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


# Measures where a larger value means more collapse; for the others smaller is worse.
_LARGER_IS_WORSE = ("alpha_req", "collapsed_dimensions")


class CollapseMonitor(keras.callbacks.Callback):
    """Logs collapse measures of held-out embeddings and stops training on collapse.

    Every ``every`` epochs (and at the last one) it embeds ``x`` (or each of ``views``)
    with the model and writes :func:`keras_featreg.metrics.collapse_measures` into the
    epoch ``logs`` as ``{prefix}{measure}`` (``val_effective_rank``, ...): ``History``
    records them and a ``keras.callbacks.TensorBoard`` listed *after* this callback writes
    them.  Every value is also kept in ``self.history`` (a list of dicts with ``epoch``).

    Training batches: with ``every_steps=N`` the callback reads, every ``N`` training steps,
    the batch logs of the :class:`keras_featreg.metrics.CollapseMeasure` metrics the model
    was compiled with (``metrics=[EffectiveRank(average=False)]``: Keras hands callbacks no
    batch data, the compiled metrics see each batch's ``y_pred``), keeps them in
    ``self.step_history`` and applies the stopping rule to them too.

    Stopping (like ``keras.callbacks.EarlyStopping``): when ``threshold`` is set, the
    ``monitor`` value (default: the first measure) *crosses* it when it falls below it
    (``mode="min"``: RankMe, LiDAR, participation ratio, where collapse lowers the value)
    or rises above it (``mode="max"``: alpha-ReQ, collapsed dimensions); ``"auto"`` picks by
    the measure's name.  NaN counts as crossed.  After ``patience + 1`` consecutive crossed
    evaluations ``model.stop_training`` is set.  With ``restore_best_weights`` the weights
    of the best evaluation (highest value for ``mode="min"``, lowest for ``"max"``) are
    put back when training stops on collapse, or at the end of training.

    Args:
        x: held-out inputs, evaluated as one embedding matrix (``model.predict``).
        views: instead of (or with) ``x``: a list/tuple of ``q >= 2`` inputs, the augmented
            views of the same held-out samples (two-view SSL: ``[x_a, x_b]``); needed for
            ``"lidar"``.  Without ``x`` the other measures use the first view.
        measures: names from :data:`keras_featreg.metrics.MEASURES`.
        embedding_model: model producing the embeddings (default: the trained model).
        every: evaluate every ``every`` epochs.
        every_steps: read the compiled collapse metrics every ``every_steps`` steps (None:
            never).
        prefix: key prefix of the epoch logs.
        monitor: the log key the stopping rule watches (default ``prefix + measures[0]``;
            a step-level key, e.g. ``"effective_rank"``, is watched every ``every_steps``).
        threshold: the collapse threshold; None logs only.
        mode: ``"auto"``, ``"min"`` or ``"max"`` (above).
        patience: crossed evaluations tolerated before stopping.
        restore_best_weights: restore the best weights (above).
        batch_size: ``predict`` batch size.
        verbose: 1 prints a line when stopping.
        **measure_kwargs: ``epsilon``, ``fit_range``, ``threshold`` of collapsed dimensions
            (as ``collapse_threshold``), ``delta``, ``method``.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = np.random.rand(32, 4)
    >>> cb = CollapseMonitor(x, measures=("effective_rank", "participation_ratio"))
    >>> h = model.fit(x, np.zeros((32, 3)), epochs=2, callbacks=[cb], verbose=0)
    >>> len(h.history["val_effective_rank"])
    2
    """

    def __init__(self, x=None, views=None, measures=("effective_rank", "participation_ratio"),
                 embedding_model=None, every=1, every_steps=None, prefix="val_", monitor=None,
                 threshold=None, mode="auto", patience=0, restore_best_weights=False,
                 batch_size=256, verbose=0, collapse_threshold=None, **measure_kwargs):
        super().__init__()
        if isinstance(measures, str):
            measures = (measures,)
        self.measures = tuple(measures)
        if not self.measures:
            raise ValueError(f"`measures` must name at least one measure. Received: measures={measures!r}")
        for m in self.measures:
            _utils.check_choice("measures", m, MEASURES)
        if x is None and views is None:
            raise ValueError("`x` or `views` must be given. Received: x=None, views=None")
        if views is not None and (not isinstance(views, (list, tuple)) or len(views) < 2):
            raise ValueError(
                "`views` must be a list or tuple of at least 2 inputs (the views of the same "
                f"samples). Received: views of type {type(views).__name__}"
                + (f" with {len(views)} view(s)" if isinstance(views, (list, tuple)) else "")
            )
        if "lidar" in self.measures and views is None:
            raise ValueError("The 'lidar' measure needs `views`. Received: views=None")
        self.x = x
        self.views = views
        self.embedding_model = embedding_model
        self.every = _utils.check_int("every", every)
        self.every_steps = _utils.check_optional_int("every_steps", every_steps)
        self.prefix = str(prefix)
        self.monitor = str(monitor) if monitor is not None else self.prefix + self.measures[0]
        self.threshold = (None if threshold is None
                          else _utils.check_number("threshold", threshold))
        _utils.check_choice("mode", mode, ("auto", "min", "max"))
        if mode == "auto":
            mode = "max" if any(self.monitor.endswith(m) for m in _LARGER_IS_WORSE) else "min"
        self.mode = mode
        self.patience = _utils.check_int("patience", patience, minimum=0)
        self.restore_best_weights = _utils.check_bool("restore_best_weights",
                                                      restore_best_weights)
        self.batch_size = _utils.check_int("batch_size", batch_size)
        self.verbose = verbose
        if collapse_threshold is not None:
            measure_kwargs["threshold"] = collapse_threshold
        self.measure_kwargs = measure_kwargs
        self.history = []
        self.step_history = []
        self.stopped_epoch = None
        self.best = None
        self.best_epoch = None
        self.best_weights = None
        self._crossed = 0
        self._step = 0

    # -- evaluation ---------------------------------------------------------------------
    def _predict(self, x):
        model = self.embedding_model or self.model
        return np.asarray(model.predict(x, batch_size=self.batch_size, verbose=0))

    def evaluate(self):
        """Embeds the held-out data; returns ``{prefix + measure: float}``."""
        emb = self._predict(self.x) if self.x is not None else None
        views = [self._predict(v) for v in self.views] if self.views is not None else None
        values = collapse_measures(emb, self.measures, views=views, **self.measure_kwargs)
        return {self.prefix + k: float(ops.convert_to_numpy(v)) for k, v in values.items()}

    # -- stopping rule ------------------------------------------------------------------
    def _is_crossed(self, value):
        if not np.isfinite(value):
            return True
        return value < self.threshold if self.mode == "min" else value > self.threshold

    def _better(self, value):
        if not np.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "min" else value < self.best

    def _watch(self, value, epoch):
        if self.restore_best_weights and self._better(value):
            self.best, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()
        elif self._better(value):
            self.best, self.best_epoch = value, epoch
        if self.threshold is None:
            return
        self._crossed = self._crossed + 1 if self._is_crossed(value) else 0
        if self._crossed > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                print(f"CollapseMonitor: {self.monitor}={value:.4g} crossed "
                      f"{self.threshold:.4g} (mode={self.mode}); stopping at epoch {epoch + 1}.")
            self._restore()

    def _restore(self):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    # -- Keras hooks --------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._crossed, self._step = 0, 0
        self.stopped_epoch = self.best = self.best_epoch = self.best_weights = None

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_steps is None or self._step % self.every_steps or not logs:
            return
        names = [m for m in self.measures if m in logs]
        if self.monitor in logs and self.monitor not in names:
            names.append(self.monitor)
        if not names:
            return
        values = {k: float(np.asarray(logs[k])) for k in names}
        self.step_history.append({"step": self._step, **values})
        if self.monitor in values and not self.model.stop_training:
            self._watch(values[self.monitor], epoch=len(self.history))

    def _due(self, epoch):
        last = self.params.get("epochs") if self.params else None
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        values = self.evaluate()
        self.history.append({"epoch": epoch, **values})
        if logs is not None:
            logs.update(values)
        if self.monitor in values and not self.model.stop_training:
            self._watch(values[self.monitor], epoch)

    def on_train_end(self, logs=None):
        if self.stopped_epoch is None:
            self._restore()
