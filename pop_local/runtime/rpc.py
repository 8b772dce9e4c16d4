"""Several machines through llama.cpp's RPC backend: serve this machine's devices to another host
(`pop-local rpc-server`), and use remote devices from this one (`--rpc HOST:PORT,...`,
`PopLlama(rpc_servers=...)`).

Remote devices are registered in ggml's device registry before the model loads. llama.cpp then counts
each as a GPU: layers are split over them and any local GPU (`tensor_split`, by default in proportion
to free memory), the rest stays on the CPU. The graph, POP's pruned graph included, is still built
here by the same graph builders; ggml's scheduler sends each device its part. Registration is
process-wide and cannot be undone, so a server is registered once per process.

The protocol has no authentication or encryption: a server must only be reachable from machines you
trust (it binds to 127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import threading
from typing import Iterable, List, Sequence, Union

from pop_local.errors import PopError

from .upstream import ABORT_CALLBACK_T, ggml, ggml_base, ggml_rpc, model_devices

__all__ = ["DEFAULT_PORT", "parse_endpoints", "check_reachable", "use_servers", "registered", "devices_for_load",
           "serve_devices"]

DEFAULT_PORT = 50052
CONNECT_TIMEOUT_S = 5.0
# read by the patched ggml-rpc transport when it opens a connection (SO_RCVTIMEO / SO_SNDTIMEO)
TIMEOUT_ENV = "POP_LOCAL_RPC_TIMEOUT"

_lock = threading.Lock()
_registered: List[str] = []


def parse_endpoints(value: Union[str, Sequence[str], None]) -> List[str]:
    """"HOST:PORT[,HOST:PORT...]" (or a list of them) -> ["host:port", ...], checked, duplicates dropped."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    found: List[str] = []
    for raw in parts:
        text = str(raw).strip()
        host, colon, port = text.rpartition(":")
        if not colon or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not HOST:PORT (e.g. 192.168.1.20:{DEFAULT_PORT})")
        if any(c.isspace() for c in host) or not host.isascii():
            raise ValueError(f"{text!r}: bad host name")
        endpoint = f"{host}:{int(port)}"
        if endpoint not in found:
            found.append(endpoint)
    if not found:
        raise ValueError("no server given")
    return found


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect and close, so an unreachable server is one clear error here rather than an abort
    inside ggml (which has no connect timeout)."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except socket.timeout:
        raise PopError(f"cannot reach the RPC server at {endpoint}: no answer within {timeout:g} s") from None
    except OSError as e:
        raise PopError(f"cannot reach the RPC server at {endpoint}: {e.strerror or e}") from None


def _rpc_lib() -> ctypes.CDLL:
    try:
        return ggml_rpc()
    except RuntimeError:
        raise PopError("this build of llama.cpp has no RPC backend: "
                       "rebuild with `python native/build.py --force`") from None


_abort_callback = None  # kept alive for the process


def _on_ggml_abort(message: bytes) -> None:
    text = (message or b"").decode(errors="replace").strip()
    where, _, what = text.partition(": ")
    if "RPC" in text or "rpc" in where:
        servers = ", ".join(_registered)
        which = f"the RPC server at {servers}" if len(_registered) == 1 else f"an RPC server (one of {servers})"
        sys.stderr.write(f"\nError: {which} stopped answering ({what or text}); the model's layers on it "
                         f"are gone, so this process stops\n")
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.write(text + "\n")  # what ggml prints without a callback; abort() follows
    sys.stderr.flush()


def _install_abort_handler() -> None:
    global _abort_callback
    if _abort_callback is None:
        _abort_callback = ABORT_CALLBACK_T(_on_ggml_abort)
        ggml_base().ggml_set_abort_callback(_abort_callback)


def registered() -> List[str]:
    """The RPC servers this process has registered so far."""
    with _lock:
        return list(_registered)


def use_servers(endpoints: Iterable[str], timeout_s: float = 300.0) -> None:
    """Register the remote devices of each server (once per process) so the next model load can use
    them; `endpoints` as LoadSettings.rpc_servers holds them, parsed where they entered. A server that
    cannot be reached is a PopError; one that stops answering later ends the process with a one-line
    error (ggml cannot recover a model whose layers are gone)."""
    wanted = list(endpoints)
    with _lock:
        new = [e for e in wanted if e not in _registered]
        if not new:
            return
        for endpoint in new:
            check_reachable(endpoint)
        lib, reg_lib = _rpc_lib(), ggml()
        os.environ[TIMEOUT_ENV] = str(int(timeout_s))
        _install_abort_handler()
        for endpoint in new:
            reg = lib.ggml_backend_rpc_add_server(endpoint.encode())
            if not reg:
                raise PopError(f"the RPC server at {endpoint} did not list its devices")
            reg_lib.ggml_backend_register(reg)
            _registered.append(endpoint)


def _offload_devices(endpoints: Sequence[str]) -> List[int]:
    """ggml devices a model with these RPC servers may use, in llama.cpp's default order: the
    servers' devices first (in the order given), then the local GPUs (integrated ones only when
    there is no discrete one). Other servers registered in this process are left out."""
    from .devices import _KINDS

    lib = ggml()
    by_server: dict = {}
    gpus, igpus = [], []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        reg = (lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)) or b"").decode(errors="replace")
        kind = _KINDS.get(lib.ggml_backend_dev_type(dev))
        if reg == "RPC":  # a remote device: ggml-rpc describes it by its server's endpoint
            endpoint = (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
            by_server.setdefault(endpoint, []).append(dev)
        elif kind == "gpu":
            gpus.append(dev)
        elif kind == "igpu":
            igpus.append(dev)
    chosen = [dev for endpoint in endpoints for dev in by_server.get(endpoint, [])]
    return chosen + (gpus or igpus)


@contextlib.contextmanager
def devices_for_load(endpoints: Sequence[str]):
    """While a model loads: restrict it to its own RPC servers' devices (and the local GPUs).

    Registered servers stay in ggml's registry for the rest of the process, and llama.cpp's default
    device selection takes every one of them; a model loaded later without rpc_servers must not land
    on them (upstream.model_devices names the devices for the load). Nothing changes while no server
    is registered."""
    if not registered():
        yield
        return
    with model_devices(_offload_devices(endpoints)):
        yield


def serve_devices(host: str, port: int, threads: int, device_names: Sequence[str] = ()) -> None:
    """Run ggml's RPC server on host:port with these local devices (default: every GPU, else the
    CPU), in this thread, until the process ends."""
    from .devices import devices as local_devices

    lib, reg_lib = _rpc_lib(), ggml()
    found = local_devices()
    names = (list(device_names) or [d.name for d in found if d.offloads]
             or [d.name for d in found if d.kind == "cpu"][:1])
    handles = []
    for name in names:
        dev = reg_lib.ggml_backend_dev_by_name(name.encode())
        if not dev:
            raise PopError(f"no device {name!r} here (pop-local devices lists them: "
                           f"{', '.join(d.name for d in found)})")
        handles.append(dev)
    array = (ctypes.c_void_p * len(handles))(*handles)
    lib.ggml_backend_rpc_start_server(f"{host}:{port}".encode(), None, threads, len(handles), array)
