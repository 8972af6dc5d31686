#!/usr/bin/env bash
# The paper-scale cost table on one GPU (issue 21 item 4), under 8 minutes on an H200:
#  1. one Algorithm 1 step of the paper profile under torchrun with NCCL (benchmarks/ddp_step.py);
#  2. benchmarks/paper_costs.py on CUDA with bf16 autocast at the largest batch that fits, timm's
#     ViT-B/16 as a calibration row, one pretraining step's memory per variant (Figure 3), the DDP
#     step's record included: results/paper-gpu/costs.{json,md}.
#
#   bash benchmarks/gpu.sh            # run it (PYTHON=... to pick the interpreter, OUT=... the folder)
#   bash benchmarks/gpu.sh --dry-run  # print the commands only
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-results/paper-gpu}"
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu.sh [--dry-run]" >&2; exit 2 ;;
esac

run() {  # print the command; run it unless --dry-run
  printf '%q ' "$@"; echo
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

if [ "$DRY_RUN" -eq 0 ]; then
  mkdir -p "$OUT"
  rm -f "$OUT/ddp_step.json"  # the table includes this run's step only
  "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA device")'
fi
run timeout 120 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/ddp_step.py \
  --device cuda --amp bf16 --pairs 64 --objects 32 --out "$OUT/ddp_step.json" \
  || echo "gpu.sh: the DDP step failed; the table goes on without it" >&2
DDP_STEP=()
if [ "$DRY_RUN" -eq 1 ] || [ -f "$OUT/ddp_step.json" ]; then DDP_STEP=(--ddp-step "$OUT/ddp_step.json"); fi
run timeout 360 "$PYTHON" benchmarks/paper_costs.py --device cuda --amp bf16 --batch auto --max-batch 2048 \
  --warmup 3 --latency-repeats 20 --threads 8 --calibration --memory "${DDP_STEP[@]}" --out "$OUT"
