"""native/build.py: how CMAKE_ARGS are composed and when a build is reused (no compiling here)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "native"))

import build  # noqa: E402


def test_hook_comes_first_and_user_args_pass_through_unchanged():
    user = "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89"
    args = build.cmake_args(user, patched=True)
    assert args.startswith(f"-DCMAKE_PROJECT_llama_cpp_INCLUDE={build.HOOK}")
    assert args.endswith(user)  # later -D wins in CMake: the user's settings have the last word


def test_user_compiler_launcher_is_respected():
    args = build.cmake_args("-DCMAKE_C_COMPILER_LAUNCHER=sccache", patched=True)
    assert args.count("COMPILER_LAUNCHER") == 1


def test_baseline_is_built_without_the_hook():
    args = build.cmake_args("", patched=False)
    assert "CMAKE_PROJECT_llama_cpp_INCLUDE" not in args and "-DLLAVA_BUILD=OFF" in args


def test_build_dirs_and_fingerprints_follow_cmake_args(tmp_path):
    cpu = build.cmake_args("", patched=True)
    cuda = build.cmake_args("-DGGML_CUDA=on", patched=True)
    assert build.build_dir_for(tmp_path, "pop", cpu) != build.build_dir_for(tmp_path, "pop", cuda)
    assert build.build_fingerprint(cpu) != build.build_fingerprint(cuda)
    assert build.build_fingerprint(cpu) == build.build_fingerprint(cpu)


def test_hook_file_exists_and_names_our_sources():
    text = build.HOOK.read_text()
    assert "patch_upstream.py" in text and "pop.cpp" in text and "DEFER" in text


def test_sdist_is_pinned():
    assert build.SDIST_NAME == "llama_cpp_python-0.3.36.tar.gz"
    assert len(build.SDIST_SHA256) == 64


def test_gpu_variants_get_their_own_folder_and_backend_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("POP_LOCAL_BUILD_ROOT", str(tmp_path))
    assert build.gpu_lib_dir("vulkan") == tmp_path / "vulkan-lib"
    assert build.GPU_BACKENDS == {"vulkan": "-DGGML_VULKAN=on", "cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on"}
    vulkan = build.cmake_args(build.GPU_BACKENDS["vulkan"], patched=True)
    assert build.build_dir_for(tmp_path, "vulkan", vulkan) != build.build_dir_for(tmp_path, "vulkan",
                                                                                  build.cmake_args("", True))


def test_an_up_to_date_library_folder_is_not_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    flag = build.GPU_BACKENDS["vulkan"]
    out = tmp_path / "vulkan-lib"
    out.mkdir()
    (out / ".pop-build").write_text(build.build_fingerprint(build.cmake_args(flag, patched=True)) + "\n")
    # an interpreter that does not exist: any attempt to fetch or build would fail
    build.build_libs(str(tmp_path / "no-python"), tmp_path, out, "vulkan", patched=True, extra_args=flag)
    assert "up to date" in capsys.readouterr().out
    (out / ".pop-build").write_text("another build\n")
    try:
        build.build_libs(str(tmp_path / "no-python"), tmp_path, out, "vulkan", patched=True, extra_args=flag)
    except (build.BuildError, OSError):
        pass  # it tried to build: the stamp did not match
    else:
        raise AssertionError("a stale stamp was taken as up to date")


def test_amx_kernels_are_left_out_on_x86_linux_unless_the_user_sets_flags(monkeypatch):
    monkeypatch.setattr(build.sys, "platform", "linux")
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    for patched in (True, False):  # the baseline is built the same way, or it crashes where ours does not
        assert "-DCMAKE_CXX_FLAGS=-mno-amx-int8" in build.cmake_args("", patched=patched).split()
    for user in ("-DCMAKE_CXX_FLAGS=-O3", "-DGGML_NATIVE=OFF -DGGML_AMX_INT8=ON"):
        assert "-mno-amx-int8" not in build.cmake_args(user, patched=True)
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    assert "amx" not in build.cmake_args("", patched=True)


def test_the_installed_library_has_no_amx_kernels_where_the_cpu_has_them():
    """ggml-org/llama.cpp#20824: the AMX matmul of llama.cpp 0.3.36 segfaults on the first prompt on some
    Sapphire Rapids machines (this project's CI machine among them); native/build.py compiles it out."""
    import llama_cpp
    import pytest
    if not build.no_amx_flags(os.environ.get("CMAKE_ARGS", "").strip()):
        pytest.skip("this build keeps AMX (not x86-64 Linux, or the user's CMAKE_ARGS set the flags)")
    info = llama_cpp.llama_print_system_info().decode()
    assert "AMX_INT8 = 1" not in info, info
