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
            pytest.fail(f"{what} exited: {proc.stderr.read() if proc.stderr else '(see its log)'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start")
            time.sleep(0.3)


@contextlib.contextmanager
def serving(model, *args, start_timeout=180, log=None):
    """Yield (port, process) once the server accepts connections; terminate it afterwards. `log`: an open
    file for the server's output; without it, pipes read only if it fails to start (enough for a server
    that writes little: one that writes more than a pipe holds would block on it)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pop_local.apps.cli", "serve", model, "--port", str(port), *args],
                            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                            text=True)
    wait_until_listening(proc, port, start_timeout, "server")
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
