#!/usr/bin/env bash
# GPU check for charlm, on a machine with an NVIDIA GPU:
#   1. the CUDA tests (pytest -m gpu: mixed precision, bf16 probe, GPU<->CPU checkpoints, ...)
#   2. training throughput, LSTM 2x1024, seq-len 128, batch 128, fp32 and fp16: charlm's full
#      loop against raw cuDNN nn.LSTM forward+backward (target >= 85% of raw), written as JSON.
#
# Usage: benchmarks/gpu_check.sh [RESULTS_JSON]     (default benchmarks/gpu_results.json)
#        GPU_CHECK_SECONDS=15 sets the seconds per throughput measurement (4 of them: ~60 s).
# Exits 2 at once when there is no GPU; otherwise with the tests' status.
set -euo pipefail
cd "$(dirname "$0")/.."
results="${1:-benchmarks/gpu_results.json}"
seconds="${GPU_CHECK_SECONDS:-15}"

if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA GPU is available here (torch.cuda.is_available() is False);" \
         "run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch" >&2
    exit 2
fi
python -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
                               "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())'

status=0
python -m pytest -m gpu -q tests/test_gpu.py || status=$?
python benchmarks/gpu_throughput.py --seconds "$seconds" --out "$results"
if [ "$status" -ne 0 ]; then
    echo "gpu_check: the GPU tests failed (exit $status)" >&2
fi
exit "$status"
