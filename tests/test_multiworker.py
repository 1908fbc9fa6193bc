"""A real two-process ``MultiWorkerMirroredStrategy`` run on this machine (issue 4).

Two worker processes (``tests/multiworker_worker.py``, one CPU replica each, ``TF_CONFIG``
with two free 127.0.0.1 ports) train a model with ``SVMax(cross_replica=True)`` and
``TripletLoss(cross_replica=True)`` for a few steps; a third process trains the same model
from the same weights on the same global batches on one device.  The weights and the
reported losses must agree.  All three start together, are bounded by ``TIMEOUT`` seconds,
and are killed (their own process groups only) if anything goes wrong.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multiworker_worker.py")
TIMEOUT = 240
TOL = 1e-6


def _free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    # gRPC on the loopback interface: no proxy, whatever the environment says.
    for name in ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "GRPC_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _run_all(commands, timeout):
    """Starts every (args, env, log path) together and returns their exit codes.  Once one
    fails (the other workers would wait for it forever) or `timeout` seconds have passed,
    the process groups still alive are killed (exit code -9)."""
    processes = []
    try:
        for args, env, log in commands:
            with open(log, "w") as out:
                processes.append(subprocess.Popen(
                    [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                    cwd=HERE, start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes]
            if all(code is not None for code in codes) or any(code for code in codes):
                break
            time.sleep(0.5)
    finally:
        for p in processes:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
    return [p.returncode for p in processes]


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_two_workers_equal_single_process(tmp_path):
    for attempt in range(2):  # a second try only if a free port was taken meanwhile
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        commands = [([WORKER, "single", str(tmp_path / "single.npz")], _env(),
                     tmp_path / "single.log")]
        for index in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            commands.append(([WORKER, "worker", str(tmp_path / f"worker{index}.npz")],
                             _env(config), tmp_path / f"worker{index}.log"))
        codes = _run_all(commands, TIMEOUT)
        logs = {log.name: log.read_text()[-3000:] for _, _, log in commands}
        port_taken = any("Address already in use" in text or "Could not start gRPC server"
                         in text for text in logs.values())
        if codes == [0, 0, 0] or not port_taken:
            break
    assert codes == [0, 0, 0], (codes, logs)

    single = np.load(tmp_path / "single.npz")
    workers = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    n_weights = len([k for k in single.files if k.startswith("w")])

    def max_error(a, b, prefix_a="w", prefix_b="w"):
        return max(float(np.max(np.abs(a[f"{prefix_a}{i}"] - b[f"{prefix_b}{i}"])))
                   for i in range(n_weights))

    assert int(single["replicas"]) == 1
    assert max_error(single, single, "w", "init") > 1e-2  # it trained
    losses = single["losses"]
    assert len(losses) >= 3 and np.all(np.isfinite(losses)) and np.ptp(losses) > 1e-4
    for index, worker in enumerate(workers):
        assert int(worker["replicas"]) == 2
        weight_error = max_error(worker, single)
        loss_error = float(np.max(np.abs(worker["losses"] - losses)))
        print(f"worker {index}: weights max |diff| {weight_error:.3g}, "
              f"loss max |diff| {loss_error:.3g}")
        assert weight_error <= TOL, weight_error
        # The loss each worker reports is the global-batch loss, as on one device.
        assert loss_error <= TOL, (worker["losses"], losses)
