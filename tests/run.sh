#!/usr/bin/env bash
# Runs the whole test suite: TensorFlow backend, JAX backend, torch backend (when torch is
# installed), and the activity-regularizer
# strength tests again under Keras 3.13 (which does not divide activity regularizers by the
# batch size, unlike Keras >= 3.14). Exits non-zero if any run fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

echo "=== pytest, KERAS_BACKEND=tensorflow"
KERAS_BACKEND=tensorflow "$PY" -m pytest -q -p no:cacheprovider "$@" || status=1

echo "=== pytest, KERAS_BACKEND=jax"
KERAS_BACKEND=jax "$PY" -m pytest -q -p no:cacheprovider "$@" || status=1

echo "=== pytest, KERAS_BACKEND=torch"
if "$PY" -c "import torch" 2>/dev/null; then
    KERAS_BACKEND=torch "$PY" -m pytest -q -p no:cacheprovider "$@" || status=1
else
    echo "skipped: torch is not installed (pip install -e \".[torch]\" to run this pass; .ci/run does)"
fi

echo "=== pytest tests/test_strength.py under Keras 3.13 (no batch-size division)"
K313=${KERAS313_DIR:-"$HOME/.cache/keras_featreg/keras313"}
if [ ! -f "$K313/keras/__init__.py" ]; then
    "$PY" -m pip install -q --no-deps --target "$K313" "keras==3.13.2" || status=1
fi
PYTHONPATH="$K313${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=tensorflow EXPECT_KERAS_MINOR=13 \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_strength.py || status=1

exit $status
