#!/usr/bin/env bash
# The test suite, in two tiers.
#
#   bash tests/run.sh            the fast tier: the default backend (TensorFlow), every test
#                                not marked `slow` (every module of the package is touched)
#   bash tests/run.sh rest       what the fast tier leaves out: the slow tests under
#                                TensorFlow, then the passes below under JAX, torch, Keras 3.13
#                                (fast + rest = full; .ci/run runs the README's fast command,
#                                then this)
#   bash tests/run.sh full       the full matrix: the whole suite under TensorFlow (the
#                                notebook, examples, experiments, benchmarks, tf.distribute
#                                and multi-worker runs included), then under JAX and torch
#                                (when torch imports; the experiments' and benchmarks' script
#                                runs stay TensorFlow-only, the examples skip torch),
#                                then the activity-regularizer strength tests under Keras 3.13
#                                (which does not divide activity regularizers by the batch
#                                size, unlike Keras >= 3.14); the slowest tests are listed
#                                (--durations) for each pass.
#
# Other arguments go to pytest (e.g. `bash tests/run.sh full -x`, `bash tests/run.sh -k svmax`).
# Exits non-zero if any pass fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
TIER=fast
if [ "${1:-}" = full ] || [ "${1:-}" = fast ] || [ "${1:-}" = rest ]; then
    TIER=$1
    shift
fi
status=0
start=$SECONDS
pass() { echo "=== [$((SECONDS - start))s] $*"; }

if [ "$TIER" = fast ]; then
    pass "fast tier: pytest -m 'not slow', KERAS_BACKEND=${KERAS_BACKEND:-tensorflow}"
    KERAS_BACKEND=${KERAS_BACKEND:-tensorflow} "$PY" -m pytest -q -p no:cacheprovider \
        -m "not slow" --durations=15 "$@" || status=1
    pass "done (fast tier; the full matrix is: bash tests/run.sh full)"
    exit $status
fi

for backend in tensorflow jax torch; do
    if [ "$backend" = torch ] && ! "$PY" -c "import torch" 2>/dev/null; then
        pass "skipped KERAS_BACKEND=torch: torch is not installed (pip install -e \".[torch]\"; .ci/run does)"
        continue
    fi
    select=()
    if [ "$TIER" = rest ] && [ "$backend" = tensorflow ]; then
        select=(-m slow)  # the fast tier ran the others
    fi
    if [ "$backend" != tensorflow ]; then
        # The experiments' and benchmarks' script smoke runs exercise the scripts, whose
        # backend-dependent code is the library's (tested on every backend): TensorFlow only.
        select+=(--ignore=tests/test_experiments.py --ignore=tests/test_benchmarks.py)
    fi
    if [ "$backend" = torch ]; then
        select+=(--ignore=tests/test_examples.py)  # the examples and notebook: TF and JAX
    fi
    pass "pytest, KERAS_BACKEND=$backend ${select[*]:-(all tests)}"
    KERAS_BACKEND=$backend "$PY" -m pytest -q -p no:cacheprovider --durations=25 ${select[@]+"${select[@]}"} "$@" \
        || status=1
done

pass "pytest tests/test_strength.py under Keras 3.13 (no batch-size division)"
K313=${KERAS313_DIR:-"$HOME/.cache/keras_featreg/keras313"}
if [ ! -f "$K313/keras/__init__.py" ]; then
    "$PY" -m pip install -q --no-deps --target "$K313" "keras==3.13.2" || status=1
fi
PYTHONPATH="$K313${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=tensorflow EXPECT_KERAS_MINOR=13 \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_strength.py || status=1
pass "done ($TIER)"
exit $status
