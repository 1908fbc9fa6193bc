"""The studies' embedding networks: the small CNN or a ``keras.applications`` backbone, then
a ``dim``-dimensional L2-normalized embedding with its regularizer; and ``table1.py``'s
build-and-compile step (the distributed hook). Import it after ``_common.import_keras()``."""

import contextlib

import keras
from _protocol import BACKBONES, make_loss, make_regularizer
from _schedule import ConstantThenPolynomialDecay

from keras_featreg.layers import EmbeddingRegularization


def _small_cnn(x, width, hidden=256, input_pool=1):
    """[AvgPool] then Conv(3x3)+MaxPool blocks until the map is <= 7 pixels, then a hidden
    Dense layer."""
    if input_pool > 1:
        x = keras.layers.AveragePooling2D(input_pool)(x)
    size, block = min(x.shape[1], x.shape[2]), 0
    while size > 7 or block == 0:
        x = keras.layers.Conv2D(width * 2**block, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        size //= 2
        block += 1
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(hidden, activation="relu")(x)


def _backbone(x, name, weights, image_size):
    """A keras.applications model (no top, average pooling) on resized RGB [0, 255] input."""
    class_name, module_name = BACKBONES[name]
    constructor = getattr(keras.applications, class_name)
    preprocess = getattr(keras.applications, module_name).preprocess_input
    if x.shape[-1] == 1:
        x = keras.layers.Concatenate()([x, x, x])
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = keras.layers.Resizing(image_size, image_size)(x)
    x = keras.layers.Lambda(preprocess, name="preprocess_input")(x)
    shape = (image_size, image_size, 3)
    net = None
    if weights in ("imagenet", "auto"):
        try:
            net = constructor(include_top=False, weights="imagenet", input_shape=shape,
                              pooling="avg")
            print(f"backbone {name}: ImageNet weights")
        except Exception as err:  # no network / no cached weights
            if weights == "imagenet":
                raise
            print(f"backbone {name}: ImageNet weights unavailable ({type(err).__name__}: "
                  f"{str(err)[:80]}); using random initialization")
    if net is None:
        net = constructor(include_top=False, weights=None, input_shape=shape, pooling="avg")
    return net(x)


def build_embedding_model(input_shape, dim=128, regularizer=None, regularize_before_norm=False,
                          backbone=None, weights="auto", image_size=224, width=32,
                          hidden=256, input_pool=1, input_scale=1.0):
    """Image -> L2-normalized ``dim`` embedding, the regularizer added with ``add_loss``.

    The embedding layer, the normalization and the regularizer compute in float32 under a
    mixed-precision policy.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if backbone is None:
        if input_scale != 1.0:
            x = keras.layers.Rescaling(input_scale)(x)
        x = _small_cnn(x, width, hidden, input_pool)
    else:
        # keras.applications preprocessing expects [0, 255] RGB.
        x = keras.layers.Rescaling(255.0 * input_scale)(x)
        x = _backbone(x, backbone, weights, image_size)
    emb = keras.layers.Dense(dim, dtype="float32", name="embedding")(x)
    if regularizer is not None and regularize_before_norm:
        emb = EmbeddingRegularization(regularizer, dtype="float32", name="regularizer")(emb)
    emb = keras.layers.UnitNormalization(dtype="float32", name="l2_normalize")(emb)
    if regularizer is not None and not regularize_before_norm:
        emb = EmbeddingRegularization(regularizer, dtype="float32", name="regularizer")(emb)
    return keras.Model(inputs, emb, name="embedding_net")


def build_and_compile(args, loss_name, reg_name, lr, input_shape, input_scale, strategy=None):
    """Builds and compiles one embedding model.

    ------------------------------------------------------------------------------------
    DISTRIBUTED TRAINING HOOK (``--distributed``, added separately): pass a
    ``tf.distribute.Strategy`` as `strategy`; the model, the optimizer and the loss are
    created inside its scope, nothing else in ``table1.py`` needs to change (the global
    batch is the p x l batch of the class-balanced dataset).
    ------------------------------------------------------------------------------------
    """
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        regularizer, lam, before_norm = make_regularizer(reg_name, loss_name, args.svmax_lambda)
        if strategy is not None and regularizer is not None:  # statistics of the global batch
            regularizer = type(regularizer).from_config(
                {**regularizer.get_config(), "cross_replica": True})
        model = build_embedding_model(
            input_shape, dim=args.dim, regularizer=regularizer,
            regularize_before_norm=before_norm, backbone=args.backbone, weights=args.weights,
            image_size=args.image_size, width=args.width, hidden=args.hidden,
            input_pool=args.input_pool, input_scale=input_scale)
        schedule = ConstantThenPolynomialDecay(lr, args.iterations, end_learning_rate=1e-7)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
        model.compile(optimizer=optimizer, loss=make_loss(loss_name, args.contrastive_pairs),
                      jit_compile=True if args.jit_compile else "auto")
    return model, lam
