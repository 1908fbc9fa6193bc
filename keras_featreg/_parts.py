"""What the swappable parts (distances, miners, reducers) share: config, equality, lookup."""

import keras


class Part:
    """Base of a part: a small object configured by its constructor arguments.

    Subclasses set ``name`` (their string identifier, for the built-ins) and return their
    constructor arguments from ``get_config``; equality, hashing and ``repr`` follow the
    config, so a deserialized part equals the original.
    """

    name = None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def lookup(identifier, base, by_name, arg):
    """`identifier` as an instance of `base`: None, an instance, a built-in name or a config.

    Raises:
        ValueError: naming `arg`, the accepted names and what was received.
    """
    if identifier is None or isinstance(identifier, base):
        return identifier
    if isinstance(identifier, str) and identifier in by_name:
        return by_name[identifier]()
    if isinstance(identifier, dict):
        obj = keras.saving.deserialize_keras_object(identifier)
        if isinstance(obj, base):
            return obj
    raise ValueError(
        f"`{arg}` must be one of {sorted(by_name)} or a {base.__module__}.{base.__name__}. "
        f"Received: {arg}={identifier!r}"
    )


def name_of(part, by_name):
    """The string name of a built-in part with its default arguments (for configs), else the part."""
    if type(part) in by_name.values() and part == type(part)():
        return part.name
    return part
