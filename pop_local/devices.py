"""The compute devices the loaded llama.cpp build sees (ggml's device registry): the CPU, and the GPUs
its backends found (CUDA, Metal, Vulkan). `pop-local devices` prints them; the GPU tests use them to
know whether there is anything to offload to.

The ggml functions are reached through the libraries next to the loaded libllama (llama-cpp-python
binds only llama.cpp's own API; its ggml module loads the packaged libraries even when
LLAMA_CPP_LIB_PATH points elsewhere, so it is not used here).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# enum ggml_backend_dev_type
_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True)
class Device:
    name: str          # ggml's device name, also the name of its buffers ("CPU", "Vulkan0", "CUDA0")
    description: str   # what the backend reports, e.g. the GPU's product name
    kind: str          # cpu, gpu, igpu, accel or meta
    memory_free: int   # bytes
    memory_total: int  # bytes

    @property
    def offloads(self) -> bool:
        """Whether llama.cpp can put layers on it (n_gpu_layers): GPUs, integrated or not."""
        return self.kind in ("gpu", "igpu")


def _library_names(stem: str) -> list[str]:
    if sys.platform == "win32":
        return [f"{stem}.dll", f"lib{stem}.dll"]
    if sys.platform == "darwin":
        return [f"lib{stem}.dylib", f"lib{stem}.so"]
    return [f"lib{stem}.so"]


def _already_loaded(folder: Path, stem: str) -> "Path | None":
    """The file of lib`stem` this process has mapped from `folder` (Linux). Wheels hold copies, not
    links (libggml.so, libggml.so.0, ...): libllama loads the one its SONAME names, and opening
    another copy would load a second ggml with its own device registry."""
    try:
        with open("/proc/self/maps") as maps:
            fields = (line.split(None, 5) for line in maps)  # address perms offset dev inode path
            paths = {f[5].strip() for f in fields if len(f) == 6}
    except OSError:
        return None
    for path in sorted(paths):
        p = Path(path)
        if p.parent == folder and (p.name == f"lib{stem}.so" or p.name.startswith(f"lib{stem}.so.")):
            return p
    return None


def _load_beside_llama(stem: str) -> ctypes.CDLL:
    """lib`stem` as libllama (loaded by llama-cpp-python) uses it: the very copy it mapped."""
    import llama_cpp.llama_cpp as bindings

    folder = Path(bindings._lib._name).resolve().parent
    loaded = _already_loaded(folder, stem)
    if loaded is not None:
        return ctypes.CDLL(str(loaded))
    for name in _library_names(stem):
        if (folder / name).exists():
            return ctypes.CDLL(str(folder / name))
    raise RuntimeError(f"lib{stem} not found next to {bindings._lib._name}")


@lru_cache(maxsize=1)
def ggml() -> ctypes.CDLL:
    """libggml (device registry) with the few functions used here declared."""
    lib = _load_beside_llama("ggml")
    p = ctypes.c_void_p
    for name, res, args in [
        ("ggml_backend_reg_count", ctypes.c_size_t, []),
        ("ggml_backend_reg_get", p, [ctypes.c_size_t]),
        ("ggml_backend_reg_name", ctypes.c_char_p, [p]),
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", p, [ctypes.c_size_t]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [p]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [p]),
        ("ggml_backend_dev_type", ctypes.c_int, [p]),
        ("ggml_backend_dev_memory", None, [p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]),
        ("ggml_backend_dev_backend_reg", p, [p]),
        ("ggml_backend_dev_by_name", p, [ctypes.c_char_p]),
        ("ggml_backend_register", None, [p]),  # pop_local.rpc: a server's devices
    ]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


@lru_cache(maxsize=1)
def ggml_base() -> ctypes.CDLL:
    """libggml-base (tensors and buffers), for the tests that look at where graph nodes ran."""
    lib = _load_beside_llama("ggml-base")
    lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    lib.ggml_backend_buffer_name.restype, lib.ggml_backend_buffer_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    return lib


def backends() -> list[str]:
    """The backends compiled into the loaded build ("CPU", "Vulkan", "CUDA", "Metal", "RPC", ...)."""
    lib = ggml()
    return [(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) or b"?").decode(errors="replace")
            for i in range(lib.ggml_backend_reg_count())]


def devices() -> list[Device]:
    """Every device of the loaded build, in ggml's order (GPUs before the CPU)."""
    lib = ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(Device(
            name=(lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
            kind=_KINDS.get(lib.ggml_backend_dev_type(dev), "unknown"),
            memory_free=free.value, memory_total=total.value))
    return found


def offload_devices() -> list[Device]:
    """The devices layers can be offloaded to (empty on a CPU-only build or machine)."""
    return [d for d in devices() if d.offloads]


def tensor_placement(tensor: int) -> tuple[str, str]:
    """(name, buffer name) of a ggml_tensor* seen by a scheduler callback: where the node was computed
    ("Vulkan0", "CUDA0", "CPU", or a GPU backend's host buffer such as "Vulkan_Host")."""
    base = ggml_base()
    # struct ggml_tensor starts {enum ggml_type type; struct ggml_backend_buffer * buffer; ...}; this
    # layout has not changed since buffers were added, and ggml has no getter for the field
    buffer = ctypes.c_void_p.from_address(tensor + ctypes.sizeof(ctypes.c_void_p)).value
    name = (base.ggml_get_name(tensor) or b"").decode(errors="replace")
    where = (base.ggml_backend_buffer_name(buffer) or b"").decode(errors="replace") if buffer else ""
    return name, where
