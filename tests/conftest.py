import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.version()} backend={keras.backend.backend()}"


# Whole files of the slow tier (`bash tests/run.sh full`): scripts run end to end in
# subprocesses (examples, experiments, notebooks, benchmarks), tf.distribute with several
# devices and multi-worker clusters. The fast tier (`bash tests/run.sh`, `-m "not slow"`)
# runs everything else; single slow tests elsewhere carry `@pytest.mark.slow`.
SLOW_FILES = {
    "test_examples.py",
    "test_experiments.py",
    "test_benchmarks.py",
    "test_distributed.py",
    "test_multiworker.py",
}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(slow)
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow-only test (backend={keras.backend.backend()})")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
