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
