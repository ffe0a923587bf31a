#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (under 8 minutes).
#
# Build here first (about 20 minutes the first time; ../shared/cuda/README.md):
#   eval "$(bash ../shared/cuda/build-cuda-env.sh)"
#   cargo build --release --locked --features cuda
# then carry target/release/metasgd to the GPU machine and run, from the
# repository root there:
#   bash scripts/gpu-check.sh [BIN]
# It prints Markdown for docs/benchmarks.md:
#   1. CPU <-> CUDA parity of every shipped model at 1 and 3 steps (fails
#      past 1e-4);
#   2. which device --device auto gives each model;
#   3. the in-process and HTTP benchmark of Omniglot on CUDA, batched (every
#      model batches on a GPU) and unbatched (--max-batch 1), and on the CPU;
#      and of sinusoid with --device auto.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/metasgd}
RUN=("$BIN")
if [ -x ../shared/cuda/run-cuda.sh ]; then RUN=(bash ../shared/cuda/run-cuda.sh "$BIN"); fi
export METASGD_LOG=warn
start=$(date +%s)
echo "## GPU check on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'an unknown GPU'), $(date -u +%F)"
echo
echo "### 1. parity, CPU vs CUDA"
"${RUN[@]}" parity --models models --device cuda --steps 1,3 --tolerance 1e-4
echo
echo "### 2. --device auto"
"${RUN[@]}" parity --models models --device auto --steps 1 --tolerance 1e-4 | awk -F'|' 'NR>2 {print "- " $2 ": " $3}'
echo
for run in "cuda batched|--device cuda" "cuda unbatched|--device cuda --max-batch 1" "cpu|--device cpu"; do
  echo "### 3. omniglot on ${run%%|*}"
  # shellcheck disable=SC2086
  timeout 100 "${RUN[@]}" bench --models models ${run#*|} --model omniglot --iters 100 --seconds 5
  echo
done
echo "### 3. sinusoid with --device auto"
timeout 100 "${RUN[@]}" bench --models models --device auto --model sinusoid --iters 500 --seconds 5
echo
echo "(done in $(( $(date +%s) - start )) s)"
