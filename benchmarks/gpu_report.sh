#!/usr/bin/env bash
# Accelerator figures in one call: bfloat16 sampler throughput (with the fraction of the
# memory-bandwidth bound) and train-step throughput / peak memory on real-size presets.
# Usage (repository root, a machine with one GPU and jax[cuda] installed):
#   bash benchmarks/gpu_report.sh [OUTDIR [NAME]]   # NAME: only the benchmarks whose name has it
# Each benchmark has its own time limit, so one failure does not hide the others. The sampler
# and train benchmarks take ~5 minutes on one H100; rollout_1.7b (issue 15's rollout workload:
# Qwen3-1.7B, 64 prompts of 2,048 tokens x 8 samples, geometric lengths of mean ~4k capped at
# 16k) up to its 560 s limit, so run it alone: `bash benchmarks/gpu_report.sh OUT rollout`.
set -u
out=${1:-/tmp/s2d_gpu_report}
only=${2:-}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
run() {  # run NAME SECONDS ARGS...: one benchmark, its log under $out
  local name=$1 limit=$2
  shift 2
  [[ -n "$only" && "$name" != *"$only"* ]] && return
  echo "=== $name: $*"
  timeout "$limit" "$py" "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000" | tee "$out/$name.log" | tail -n 12
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
"$py" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices())"
run sampler_1.7b 200 benchmarks/sampler.py --preset qwen3_1.7b --batch 64 --prompt_len 256 \
  --new_tokens 512 --reps 2 --bandwidth_gbs "${BANDWIDTH_GBS:-3350}"
run sampler_8b 150 benchmarks/sampler.py --preset qwen3_8b --batch 64 --prompt_len 256 \
  --new_tokens 256 --reps 2 --modes greedy --bandwidth_gbs "${BANDWIDTH_GBS:-3350}"
run train_1.7b_8b 200 benchmarks/train_step.py --preset qwen3_1.7b --teacher_preset qwen3_8b \
  --batch 8 --seq 1024 --reps 3 --chunk_size 4096
# |E| = 37 of Qwen3's 151,936 ids: mean length ~4k. One run, compiles included (--reps 0).
run rollout_1.7b 560 benchmarks/rollout_engine.py --preset qwen3_1.7b --dtype bfloat16 \
  --prompts 64 --samples 8 --prompt_len 2048 --eos_count 37 --max_new_tokens 16384 \
  --engines continuous --no_hf --reps 0 --kv_budget_gb "${KV_BUDGET_GB:-50}" \
  --decode_attention pallas_gpu --bandwidth_gbs "${BANDWIDTH_GBS:-3350}"
