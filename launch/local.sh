#!/usr/bin/env bash
# Train an experiment on this machine (all local devices), then select and report.
#   launch/local.sh [CONFIG] [WORKDIR] [extra absl flags...]
#   launch/local.sh experiments/pairs.py workdirs/pairs
#   launch/local.sh experiments/pairs.py:full /scratch/pairs --config.batch_size=128
# Rerun the same command to resume after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-experiments/pairs.py}"
WORKDIR="${2:-}"
shift $(( $# < 2 ? $# : 2 ))
exec python -m tg_jax.main --config="${CONFIG}" ${WORKDIR:+--workdir="${WORKDIR}"} "$@"
