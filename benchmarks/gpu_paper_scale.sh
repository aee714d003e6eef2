#!/usr/bin/env bash
# The paper-scale training-step benchmark on one GPU, each strategy in its own time-limited run so
# that a slow compile costs only its own row: bfloat16, 31 networks (every subset of the five tasks),
# a shared batch of 64 at 256x256, 8 networks per jitted step. Writes one JSON and one log per
# strategy and prints each table.
#
#   benchmarks/gpu_paper_scale.sh RESULTS_DIR [PEAK_TFLOPS [train_step.py flags...]]
#   STRATEGIES="vmap loop" benchmarks/gpu_paper_scale.sh RESULTS_DIR    # a subset, e.g. to fit a time slot
#
# PEAK_TFLOPS: the device's dense bf16 peak, 989 for an H100 or H200 (SXM). PYTHON picks the interpreter.
# Limits come from an H200 (docs/performance.md): initialising the paper-scale cohort compiles for
# ~45 s and a vmapped 8-network step for over 85 s, and PyTorch's first step (cuDNN autotuning of 31
# networks) took 42 s.
set -u
results=${1:?usage: benchmarks/gpu_paper_scale.sh RESULTS_DIR [PEAK_TFLOPS [train_step.py flags...]]}
peak=${2:-989}
shift $(( $# < 2 ? $# : 2 ))  # the rest: extra flags for train_step.py
mkdir -p "$results"
# jaxlib 0.11.2's Triton GEMM fusion failed a check compiling a sequential_own step
# (triton_tiling_propagation.cc: "subdim_size_accumulator == dim_size") and aborted the process.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false"
common=(--scale=paper --networks=31 --batch_size=64 --dtypes=bfloat16 --networks_per_step=8 --steps=3
        --max_step_seconds=120 --peak_tflops="$peak")
# Seconds each strategy's run may take, and its --timeout (sequential_own's: per distinct compiled step, 15).
declare -A limit=([vmap]=300 [loop]=270 [sequential_own]=300 [torch_sequential]=150)
declare -A per_strategy=([vmap]=270 [loop]=240 [sequential_own]=18 [torch_sequential]=130)
for strategy in ${STRATEGIES:-vmap loop sequential_own torch_sequential}; do
  echo "== $strategy (at most ${limit[$strategy]} s)"
  timeout "${limit[$strategy]}" "${PYTHON:-python3}" benchmarks/train_step.py "${common[@]}" "$@" \
    --strategies="$strategy" --timeout="${per_strategy[$strategy]}" \
    --json="$results/paper_bf16_$strategy.json" >"$results/$strategy.log" 2>&1
  echo "exit $?"
  tail -n 1 "$results/$strategy.log"
done
