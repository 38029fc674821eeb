#!/usr/bin/env bash
# Every GPU check of the open benchmark targets in one run, for a session that is lent a GPU for minutes:
#
#     OUT=gpu-out bash benchmarks/gpu_checks.sh                     # CUDA: Dream-7B + Skywork-1.7B shapes
#     SHAPE=tiny REPEAT=1 OUT=/tmp/g bash benchmarks/gpu_checks.sh  # the same commands on the CPU, to try it first
#
# PYTHON (default python) is the interpreter that runs the benches.
#
# Writes under $OUT (default gpu-out, in the repository root; ignored by git): machine.txt (GPU,
# driver, torch, transformers, commit), and for
#   bench.py --shape $SHAPE               step.json / step.log: step, parts, overhead_ratio, filter_ratio,
#                                         filter_share, vocab_ops, peak memory of one step, host syncs
#   bench.py --throughput --shape $SHAPE  throughput.json / throughput.log: records/s at B = 1, 4, 8, and per B
#                                         the measured peak memory (CUDA) beside run.py --dry-run's prediction
# Each log is written as its bench runs (tee), and each bench prints its figures when it ends: if the
# throughput bench is cut short, the step's figures are already under $OUT (its own are lost). At
# dream-7b shapes on an H100-class GPU the two should take 3-4 minutes, model building included
# (estimated from the one H100 step timing in benchmarks/RESULTS.md; not yet run on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
shape=${SHAPE:-dream-7b}
repeat=${REPEAT:-10}
python=${PYTHON:-python}
mkdir -p "$out"
{
    date -u
    git rev-parse HEAD 2>/dev/null || echo "commit: unknown (no .git here)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$out/machine.txt" 2>&1
"$python" benchmarks/bench.py --shape "$shape" --warmup 2 --repeat "$repeat" --json "$out/step.json" 2>&1 \
    | tee "$out/step.log"
"$python" benchmarks/bench.py --throughput --shape "$shape" --warmup 1 --repeat "$(( repeat < 3 ? repeat : 3 ))" \
    --json "$out/throughput.json" 2>&1 | tee "$out/throughput.log"
