"""Build and install llama-cpp-python with pop-local's prefill-only pruning compiled in.

    python native/build.py                 # into the running interpreter's environment
    CMAKE_ARGS="-DGGML_CUDA=on" python native/build.py
    python native/build.py --vanilla DIR   # unpatched libraries into DIR (benchmark baseline)
    python native/build.py --gpu vulkan    # patched, with a GPU backend (vulkan, cuda or metal), into
                                           # <cache>/vulkan-lib (or --out DIR), for LLAMA_CPP_LIB_PATH

What it does, once per install:
1. fetches the llama-cpp-python sdist from the package registry (pip download) and checks its sha256;
2. unpacks it to a fixed folder under the cache root, so that ccache (when present) and CMake's own
   incremental build reuse earlier work;
3. runs pip's normal build of that folder: llama-cpp-python's scikit-build-core/CMake build, with
   -DCMAKE_PROJECT_llama_cpp_INCLUDE=native/pop.cmake added in front of the user's CMAKE_ARGS
   (which pass through unchanged), with --no-cache-dir so no cached unpatched wheel is ever reused;
4. checks that the installed libllama exports the POP symbols.

Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

NATIVE_DIR = Path(__file__).resolve().parent
HOOK = NATIVE_DIR / "pop.cmake"
ARCHITECTURES_PY = NATIVE_DIR.parent / "pop_local" / "format" / "architectures.py"  # compiled into libllama


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    env = os.environ.get("POP_LOCAL_BUILD_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pop-local" / "native"


# --gpu BACKEND: the CMake switch of each GPU backend llama.cpp has and pop-local documents
GPU_BACKENDS = {"vulkan": "-DGGML_VULKAN=on", "cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on"}


def gpu_lib_dir(backend: str) -> Path:
    """Where --gpu BACKEND puts the patched libraries by default (tests/gpu/run.sh looks there)."""
    return cache_root() / f"{backend}-lib"


def vanilla_lib_dir() -> Path:
    """Where --vanilla puts the unpatched libraries by default (tests and benchmarks look there)."""
    return cache_root() / "vanilla-lib"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], env: dict | None = None) -> None:
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise BuildError(f"command failed with exit code {result.returncode}: {cmd[0]} {' '.join(cmd[1:3])} ...")


def fetch_sdist(python: str, root: Path) -> Path:
    """The pinned sdist from the package registry, hash-checked (downloaded once)."""
    dl = root / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    path = dl / SDIST_NAME
    if not path.exists() or sha256(path) != SDIST_SHA256:
        with tempfile.TemporaryDirectory(dir=dl) as tmp:
            run([python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-cache-dir",
                 "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"])
            got = Path(tmp) / SDIST_NAME
            if not got.exists():
                raise BuildError(f"pip download did not produce {SDIST_NAME}")
            os.replace(got, path)
    digest = sha256(path)
    if digest != SDIST_SHA256:
        path.unlink()
        raise BuildError(f"{SDIST_NAME}: sha256 {digest} does not match the pinned {SDIST_SHA256}")
    return path


def unpack(sdist: Path, dest: Path) -> Path:
    """Unpack once into dest; keep an existing intact tree so unchanged files keep their mtimes."""
    stamp = dest / ".pop-sdist-sha256"
    if stamp.exists() and stamp.read_text().strip() == SDIST_SHA256:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".unpack-"))
    try:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp)
        (inner,) = list(tmp.iterdir())
        (inner / ".pop-sdist-sha256").write_text(SDIST_SHA256 + "\n")
        os.replace(inner, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def restore_patched(sdist: Path, src: Path) -> None:
    """Put back upstream's text of every file an earlier version of the patch edited (they carry the
    pop-local marker), once per version of patch_upstream.py, so a changed patch applies to upstream's
    sources; the other files keep their mtimes (incremental builds and ccache stay warm)."""
    stamp = src / ".pop-patch-sha256"
    want = sha256(NATIVE_DIR / "patch_upstream.py")
    if stamp.exists() and stamp.read_text().strip() == want:
        return
    with tarfile.open(sdist) as tar:
        for member in tar:
            rel = member.name.split("/", 1)[-1]
            path = src / rel
            if member.isfile() and path.suffix in (".c", ".cpp", ".h") and path.is_file() \
                    and b"// pop-local" in path.read_bytes():
                tmp = path.with_name(path.name + ".pop-restore")
                tmp.write_bytes(tar.extractfile(member).read())
                os.replace(tmp, path)
    stamp.write_text(want + "\n")


def no_amx_flags(user_args: str) -> list[str]:
    """Compile ggml's CPU backend without its AMX kernels on x86-64 Linux: on Sapphire Rapids machines
    llama.cpp 0.3.36's AMX matmul segfaults on the first prompt (ggml-org/llama.cpp#20824; reproduced
    here with the unpatched build and SmolLM2 Q4_1), and the native build turns it on wherever the CPU
    has it. GCC and Clang honour an explicit -mno-amx-int8 after -march=native. A user who sets compiler
    flags or an AMX option in CMAKE_ARGS gets exactly those (-DCMAKE_CXX_FLAGS= brings AMX back)."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    if any(word in user_args for word in ("CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS", "AMX")):
        return []
    return ["-DCMAKE_C_FLAGS=-mno-amx-int8", "-DCMAKE_CXX_FLAGS=-mno-amx-int8"]


def cmake_args(user_args: str, patched: bool) -> str:
    """Our hook first, the user's CMAKE_ARGS after it (later -D wins in CMake), ccache if present."""
    ours = []
    if patched:
        ours.append(f"-DCMAKE_PROJECT_llama_cpp_INCLUDE={HOOK}")
        # llama.cpp's RPC backend (pop-local rpc-server, --rpc): a small library; -DGGML_RPC=OFF drops it
        ours.append("-DGGML_RPC=ON")
    else:
        ours.append("-DLLAVA_BUILD=OFF")  # the baseline serves text comparisons only: no multimodal library
    ours += no_amx_flags(user_args)
    if shutil.which("ccache") and "COMPILER_LAUNCHER" not in user_args:
        ours += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
                 "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
    return " ".join(ours + ([user_args] if user_args else []))


def build_env(root: Path, args: str) -> dict:
    env = dict(os.environ)
    env["CMAKE_ARGS"] = args
    # ccache: paths relative to the cache root, so the patched and baseline trees share objects
    env.setdefault("CCACHE_BASEDIR", str(root))
    env.setdefault("CCACHE_NOHASHDIR", "1")
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    return env


def build_dir_for(root: Path, flavour: str, args: str) -> Path:
    # one build folder per flavour and CMAKE_ARGS, so a CUDA build never reuses a CPU configure;
    # the hook's path is left out, so every checkout of pop-local shares one incremental build
    key = hashlib.sha256(args.replace(str(HOOK), "<hook>").encode()).hexdigest()[:10]
    return root / flavour / f"build-{key}"


def check_installed(python: str) -> None:
    code = ("import llama_cpp.llama_cpp as m; f = m._lib.pop_llama_abi_version; "
            "f.restype = __import__('ctypes').c_int32; print(f())")
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        detail = (result.stderr.strip().splitlines() or [""])[-1]
        raise BuildError(f"the installed llama_cpp has no POP symbols; the build did not take the patch ({detail})")
    print(f"pop-local: libllama with POP (ABI {result.stdout.strip()}) installed for {python}")
    if "LLAVA_BUILD=OFF" not in os.environ.get("CMAKE_ARGS", "").replace(" ", ""):
        # the multimodal library (chat --mmproj), linked against the patched libllama
        result = subprocess.run([python, "-c", "import llama_cpp.mtmd_cpp"], capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or [""])[-1]
            raise BuildError(f"the installed llama_cpp has no multimodal library (libmtmd): {detail}")


def build_fingerprint(args: str) -> str:
    """What the installed build depends on: our native sources, the sdist and the CMake arguments."""
    # the hook's path is left out (as in build_dir_for): the same build from another checkout is the same
    h = hashlib.sha256((SDIST_SHA256 + "\n" + args.replace(str(HOOK), "<hook>")).encode())
    for path in sorted(NATIVE_DIR.iterdir()) + [ARCHITECTURES_PY]:
        if path.suffix in (".cpp", ".h", ".cmake", ".py") and path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def installed_stamp(python: str) -> Path | None:
    code = ("import importlib.util, os; s = importlib.util.find_spec('llama_cpp'); "
            "print(os.path.dirname(s.origin) if s else '')")
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    where = result.stdout.strip()
    return Path(where) / "lib" / ".pop-build" if result.returncode == 0 and where else None


def install_patched(python: str, root: Path, force: bool = False) -> None:
    args = cmake_args(os.environ.get("CMAKE_ARGS", "").strip(), patched=True)
    fingerprint = build_fingerprint(args)
    stamp = installed_stamp(python)
    if not force and stamp and stamp.exists() and stamp.read_text().strip() == fingerprint:
        check_installed(python)
        print("pop-local: this build is already installed (use --force to rebuild)")
        return
    sdist = fetch_sdist(python, root)
    src = unpack(sdist, root / "pop" / "src")
    restore_patched(sdist, src)
    build_dir = build_dir_for(root, "pop", args)
    run([python, "-m", "pip", "install", "--no-cache-dir", "--force-reinstall", "--no-deps",
         f"--config-settings=build-dir={build_dir}", str(src)], env=build_env(root, args))
    check_installed(python)
    stamp = installed_stamp(python)
    if stamp:
        stamp.write_text(fingerprint + "\n")


def build_libs(python: str, root: Path, out: Path, flavour: str, patched: bool, extra_args: str = "",
               force: bool = False) -> None:
    """libllama built from the sdist like the installed one (patched or not, plus extra_args), its
    libraries copied to out, for LLAMA_CPP_LIB_PATH; the installed build is not touched. A second
    call with the same sources and arguments finds the stamp in out and does nothing."""
    user = " ".join(x for x in (extra_args, os.environ.get("CMAKE_ARGS", "").strip()) if x)
    args = cmake_args(user, patched=patched)
    fingerprint = build_fingerprint(args)
    stamp = out / ".pop-build"
    if not force and stamp.exists() and stamp.read_text().strip() == fingerprint:
        print(f"pop-local: {flavour} libraries in {out} are up to date (use --force to rebuild)")
        return
    sdist = fetch_sdist(python, root)
    src = unpack(sdist, root / flavour / "src")
    if patched:
        restore_patched(sdist, src)
    build_dir = build_dir_for(root, flavour, args)
    with tempfile.TemporaryDirectory() as wheel_dir:
        run([python, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "-w", wheel_dir,
             f"--config-settings=build-dir={build_dir}", str(src)], env=build_env(root, args))
        (wheel,) = Path(wheel_dir).glob("*.whl")
        tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None))
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("llama_cpp/lib/"):
                    z.extract(name, tmp)
        (tmp / "llama_cpp" / "lib" / ".pop-build").write_text(fingerprint + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "llama_cpp" / "lib", out)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"pop-local: {flavour} libraries in {out} (use LLAMA_CPP_LIB_PATH={out})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter whose environment gets the build")
    p.add_argument("--vanilla", metavar="DIR", nargs="?", const="", default=None,
                   help="build unpatched llama-cpp-python the same way and put its libraries in DIR "
                        "(default: <cache>/vanilla-lib)")
    p.add_argument("--gpu", choices=sorted(GPU_BACKENDS),
                   help="build patched llama-cpp-python with this GPU backend and put its libraries in "
                        "<cache>/BACKEND-lib (or --out); the installed build is not touched")
    p.add_argument("--out", metavar="DIR", help="where --gpu puts the libraries")
    p.add_argument("--force", action="store_true", help="rebuild even if this exact build is installed")
    a = p.parse_args(argv)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if a.vanilla is not None:
            out = Path(a.vanilla).resolve() if a.vanilla else vanilla_lib_dir()
            out.parent.mkdir(parents=True, exist_ok=True)
            build_libs(a.python, root, out, "vanilla", patched=False, force=a.force)
        elif a.gpu:
            out = Path(a.out).resolve() if a.out else gpu_lib_dir(a.gpu)
            out.parent.mkdir(parents=True, exist_ok=True)
            build_libs(a.python, root, out, a.gpu, patched=True, extra_args=GPU_BACKENDS[a.gpu], force=a.force)
        else:
            install_patched(a.python, root, force=a.force)
    except BuildError as e:
        print(f"pop-local build: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
