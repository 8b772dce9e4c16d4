"""`pop-local serve` in a subprocess on a free local port, for the tests that drive the server."""

import contextlib
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_listening(proc, port, timeout, what):
    """Return once 127.0.0.1:port accepts a connection; fail the test if `proc` exits or times out."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start")
            time.sleep(0.3)


@contextlib.contextmanager
def serving(model, *args, start_timeout=180):
    """Yield (port, process) once the server accepts connections; terminate it afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pop_local.apps.cli", "serve", model, "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_listening(proc, port, start_timeout, "server")
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
