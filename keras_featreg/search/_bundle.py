"""`SearchBundle`: an embedding model, its gallery index and a calibrated threshold,
saved to and loaded from one directory."""

import json
import os
import shutil
import tempfile

import keras
import numpy as np

from keras_featreg._utils import check_int
from keras_featreg.search._calibration import UNKNOWN, Calibration, match
from keras_featreg.search._index import Index

BUNDLE_FORMAT = "keras_featreg.search.SearchBundle"
BUNDLE_VERSION = 1
_FILES = {"model": "model.keras", "index": "index.npz", "meta": "bundle.json"}


class SearchBundle:
    """An embedding model with its gallery and threshold: raw inputs in, matches out.

    Saved as a directory (``model.keras``, ``index.npz``, ``bundle.json``) that a fresh
    process loads with :meth:`load` and queries with raw inputs. The model is loaded with
    Keras's ``safe_mode`` and the index without pickle.

    Args:
        model: a Keras model mapping inputs to embeddings (e.g.
            :func:`keras_featreg.layers.embedding_model` of a trained model).
        index: the :class:`~keras_featreg.search.Index` of the gallery's embeddings.
        calibration: None, or the :class:`~keras_featreg.search.Calibration` whose
            threshold :meth:`match` uses.
    """

    def __init__(self, model, index, calibration=None):
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
        if not isinstance(index, Index):
            raise ValueError(f"`index` must be a keras_featreg.search.Index. Received: "
                             f"index={index!r}")
        if calibration is not None:
            if not isinstance(calibration, Calibration):
                raise ValueError("`calibration` must be None or a Calibration. Received: "
                                 f"calibration={calibration!r}")
            if calibration.metric != index.metric:
                raise ValueError(f"`calibration` used metric={calibration.metric!r}, the "
                                 f"index uses metric={index.metric!r}.")
        self.model, self.index, self.calibration = model, index, calibration

    def embed(self, inputs, batch_size=256):
        """The model's embeddings of raw `inputs` (inference mode), as NumPy."""
        batch_size = check_int("batch_size", batch_size)
        return np.asarray(self.model.predict(inputs, batch_size=batch_size, verbose=0))

    def lookup(self, inputs, k=1, batch_size=256):
        """The `k` nearest gallery items of each raw input (a
        :class:`~keras_featreg.search.SearchResult`)."""
        return self.index.search(self.embed(inputs, batch_size), k=k)

    def match(self, inputs, unknown_label=UNKNOWN, batch_size=256):
        """The label of each raw input's nearest gallery item, or `unknown_label`
        beyond the calibrated threshold: ``(labels, distances)``."""
        if self.calibration is None:
            raise ValueError("`match` needs a calibrated threshold: build the bundle with "
                             "calibration=keras_featreg.search.calibrate(...).")
        return match(self.index, self.embed(inputs, batch_size), self.calibration,
                     unknown_label=unknown_label)

    def save(self, path, overwrite=False):
        """Writes the bundle to the directory `path`: built in a temporary directory
        beside it, then renamed, so a failed save leaves nothing half-written."""
        path = os.path.abspath(os.fspath(path))
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"{path!r} exists. Received: overwrite=False")
        parent = os.path.dirname(path)
        tmp = tempfile.mkdtemp(prefix=".tmp-bundle-", dir=parent)
        try:
            self.model.save(os.path.join(tmp, _FILES["model"]))
            self.index.save(os.path.join(tmp, _FILES["index"]))
            meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                    "metric": self.index.metric, "dim": self.index.dim,
                    "calibration": None if self.calibration is None
                    else self.calibration.to_config()}
            with open(os.path.join(tmp, _FILES["meta"]), "w") as f:
                json.dump(meta, f)
            if os.path.exists(path):
                old = tempfile.mkdtemp(prefix=".old-bundle-", dir=parent)
                os.replace(path, os.path.join(old, "bundle"))
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path):
        """Reads a bundle written by :meth:`save` (``safe_mode`` model, no pickle)."""
        import keras_featreg  # noqa: F401  (registers the library's serializable objects)

        path = os.fspath(path)
        meta_path = os.path.join(path, _FILES["meta"])
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path!r} is not a readable search bundle: {error}") from error
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path!r} is not a search bundle ({meta_path} has no "
                             f"format {BUNDLE_FORMAT!r}).")
        if meta.get("version") != BUNDLE_VERSION:
            raise ValueError(f"{path!r} is a bundle of version {meta.get('version')!r}; this "
                             f"library reads version {BUNDLE_VERSION}.")
        index = Index.load(os.path.join(path, _FILES["index"]), metric=meta["metric"],
                           dim=meta["dim"])
        model = keras.saving.load_model(os.path.join(path, _FILES["model"]), compile=False,
                                        safe_mode=True)
        calibration = meta.get("calibration")
        if calibration is not None:
            calibration = Calibration.from_config(calibration)
        return cls(model, index, calibration)
