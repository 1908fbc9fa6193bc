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
#                                (--durations) for each pass. The passes of `rest` and
#                                `full` run in two parallel lanes (SERIAL=1: one by one).
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

# The passes run as parallel lanes (two CPU-bound pytest processes keep 2 cores busier than
# one: the JAX and torch passes are mostly single-threaded op dispatch and compilation):
# lane A = TensorFlow, Keras 3.13's strength tests, torch, then JAX on the loss tests;
# lane B = JAX on the other tests (the lanes take about as long). Each lane
# writes a log, printed whole when the lane ends. SERIAL=1 runs them one after the other.
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

backend_pass() {  # backend_pass BACKEND [pytest args]: one pytest pass, its exit status
    local backend=$1
    shift
    local select=()
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
    KERAS_BACKEND=$backend "$PY" -m pytest -q -p no:cacheprovider --durations=25 \
        ${select[@]+"${select[@]}"} "$@"
}

strength_313() {
    pass "pytest tests/test_strength.py under Keras 3.13 (no batch-size division)"
    local k313=${KERAS313_DIR:-"$HOME/.cache/keras_featreg/keras313"}
    if [ ! -f "$k313/keras/__init__.py" ]; then
        "$PY" -m pip install -q --no-deps --target "$k313" "keras==3.13.2" || return 1
    fi
    PYTHONPATH="$k313${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=tensorflow EXPECT_KERAS_MINOR=13 \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_strength.py
}

# The JAX pass is the longest: its loss tests run in lane A after torch, the rest in lane B.
JAX_IN_LANE_A=(tests/test_losses_*.py)

lane_a() {
    local status=0
    backend_pass tensorflow "$@" || status=1
    strength_313 || status=1
    if "$PY" -c "import torch" 2>/dev/null; then
        backend_pass torch "$@" || status=1
    else
        pass "skipped KERAS_BACKEND=torch: torch is not installed (pip install -e \".[torch]\"; .ci/run does)"
    fi
    backend_pass jax "${JAX_IN_LANE_A[@]}" "$@" || status=1
    return $status
}

lane_b() {
    backend_pass jax --ignore-glob='tests/test_losses_*.py' "$@"
}

if [ "${SERIAL:-0}" = 1 ]; then
    lane_a "$@" || status=1
    lane_b "$@" || status=1
else
    pass "lanes in parallel: A = TensorFlow, Keras 3.13, torch, JAX losses (log $LOGS/a.log), B = JAX, the rest ($LOGS/b.log)"
    lane_a "$@" >"$LOGS/a.log" 2>&1 &
    pid_a=$!
    lane_b "$@" >"$LOGS/b.log" 2>&1 &
    pid_b=$!
    wait $pid_a
    status_a=$?
    echo "=== lane A (TensorFlow, Keras 3.13, torch, JAX losses) ended with status $status_a:"
    cat "$LOGS/a.log"
    wait $pid_b
    status_b=$?
    echo "=== lane B (JAX, all but the losses) ended with status $status_b:"
    cat "$LOGS/b.log"
    [ $status_a = 0 ] && [ $status_b = 0 ] || status=1
fi
pass "done ($TIER)"
exit $status
