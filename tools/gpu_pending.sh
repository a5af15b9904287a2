#!/usr/bin/env bash
# The GPU measurements still owed, in calls of under 10 minutes each (the device tool's limit).
# Build the carry first (here): bash tools/device_carry.sh. Then, one `run` per stage:
#   run(command="bash tools/gpu_pending.sh kernels", carry=[".dev/carry"])   # ~3 min  (#28)
#   run(command="bash tools/gpu_pending.sh speed", carry=[".dev/carry"])     # ~6 min  (#28)
#   run(command="bash tools/gpu_pending.sh compiled", carry=[".dev/carry"])  # ~8 min  (#28)
#   run(command="bash tools/gpu_pending.sh custom", carry=[".dev/carry"])    # ~6 min  (#26, #27)
# Each writes its logs and JSON under $OUT (copied back): put the JSON in docs/benchmarks/ and the
# figures in BENCHMARKS.md. Stages go on after a failing step, and the script exits non-zero.
#   kernels   the GroupNorm kernels' tests (all of them: on CUDA the float64 ones run the compiled
#             kernels), the GPU tests of the fast paths; the kernels against PyTorch's GroupNorm
#             per shape; both networks per call, NCHW vs NHWC
#   speed     the trainer: paper and fast, rows optimized (previous default), nhwc, baseline
#   compiled  the trainer: paper, rows compiled and compiled_nhwc (compilation is minutes)
#   custom    SDXL and the low-VRAM modes (bench_custom_models), their GPU tests, and scoring's
#             120-view cost (bench_score)
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    kernels|speed|compiled|custom) ;;
    *) echo "usage: bash tools/gpu_pending.sh kernels|speed|compiled|custom" >&2; exit 2 ;;
esac
if ! command -v nvidia-smi >/dev/null; then
    echo "tools/gpu_pending.sh runs on the GPU machine: run(command=\"bash tools/gpu_pending.sh $1\", carry=[\".dev/carry\"])" >&2
    exit 2
fi
if [ ! -f .dev/carry/env.sh ]; then
    echo "no .dev/carry: run 'bash tools/device_carry.sh' on the CPU machine and pass carry=[\".dev/carry\"]" >&2
    exit 2
fi
source .dev/carry/env.sh
OUT=${OUT:-/tmp/ism3d_gpu_out}
mkdir -p "$OUT"
rc=0
step() {  # step NAME CMD...: run, tee to $OUT/NAME.txt, remember a failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.txt"
    local s=${PIPESTATUS[0]}
    [ "$s" -eq 0 ] || { echo "== $name failed ($s)"; rc=1; }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
case "${1:-}" in
    kernels)
        # all of test_group_norm.py: on CUDA its float64 tests run the compiled kernels too
        step gpu_tests python -m pytest -q tests/test_group_norm.py
        step gpu_paths python -m pytest -q -m gpu tests/test_speed_paths.py tests/test_cuda_graph.py
        step group_norm python benchmarks/diagnostics.py group-norm
        step calls python benchmarks/diagnostics.py calls --channels-last --batches 4,8
        ;;
    speed)
        step speed python benchmarks/bench_speed.py --presets paper,fast --rows optimized,nhwc,baseline \
            --iters 16 --warmup 6 --json "$OUT/speed_paper_fast.json"
        ;;
    compiled)
        step compiled python benchmarks/bench_speed.py --presets paper --rows compiled,compiled_nhwc \
            --iters 16 --warmup 6 --json "$OUT/speed_paper_compiled.json"
        ;;
    custom)
        step custom_models sh -c "python benchmarks/bench_custom_models.py > '$OUT/custom_models.json'"
        step custom_tests python -m pytest -q -m gpu tests/test_custom_models.py tests/test_score.py
        step score python benchmarks/bench_score.py
        ;;
esac
exit $rc
