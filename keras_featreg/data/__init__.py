"""Class-balanced (p × l) batches and open-set dataset loaders.

* :mod:`~keras_featreg.data.samplers`: `class_balanced_dataset` (an infinite
  `tf.data.Dataset` of p classes × l samples per batch, the layout metric-learning losses
  need) and `split_by_class` (training classes vs disjoint test classes).
* :mod:`~keras_featreg.data.datasets`: loaders returning ``(x_train, y_train), (x_test,
  y_test)`` for the open-set retrieval protocol (test classes disjoint from the training
  ones, original class ids): scikit-learn's digits, Fashion-MNIST from IDX files
  (`read_idx`), and CUB-200-2011 / CARS196 / Stanford Online Products via
  tensorflow-datasets.
* :mod:`~keras_featreg.data.glyphs`: `load_glyphs_split`, an offline many-class open-set
  benchmark: common CJK characters (classes) rendered in Debian's CJK fonts (samples).

Everything is re-exported here: ``from keras_featreg.data import class_balanced_dataset``.
"""

from keras_featreg.data.datasets import (  # noqa: F401  (FASHION_MNIST_DIRS: re-export)
    FASHION_MNIST_DIRS,
    load_digits_split,
    load_fashion_mnist_split,
    load_tfds_split,
    read_idx,
)
from keras_featreg.data.glyphs import (  # noqa: F401  (GLYPH_*: re-export)
    GLYPH_FONT_PACKAGES,
    GLYPH_FONTS,
    available_glyph_fonts,
    load_glyphs_split,
)
from keras_featreg.data.samplers import class_balanced_dataset, split_by_class

__all__ = [
    "available_glyph_fonts",
    "class_balanced_dataset",
    "load_digits_split",
    "load_fashion_mnist_split",
    "load_glyphs_split",
    "load_tfds_split",
    "read_idx",
    "split_by_class",
]
