"""The compute devices the loaded llama.cpp build sees (ggml's device registry): the CPU, and the GPUs
its backends found (CUDA, Metal, Vulkan). `pop-local devices` prints them; the GPU tests use them to
know whether there is anything to offload to.

The ggml functions are reached through the libraries next to the loaded libllama (upstream.py:
llama-cpp-python binds only llama.cpp's own API; its ggml module loads the packaged libraries even
when LLAMA_CPP_LIB_PATH points elsewhere, so it is not used here).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from .upstream import ggml, ggml_base

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


def physical_cores() -> "int | None":
    """The CPU cores this process may run on, each core's hyperthreads counted once: the thread count
    llama.cpp's own tools default to. llama-cpp-python's default is half the logical CPUs, one thread
    on a 2-core machine without hyperthreads, where two decode 1.46x faster (SmolLM2 Q8_0:
    benchmarks/results/decode-threads-smollm2-q8_0.json, benchmarks/decode.py --threads 1,2).
    None where the platform does not say (outside Linux): llama-cpp-python's default then."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return None
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(topology + "physical_package_id") as package, open(topology + "core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return None
    return len(cores) or None
