#!/usr/bin/env bash
# Follow the log of the run started by run.sh on one worker (process 0 writes the metrics).
#
#   launch_tpu/logs.sh --name s2d --zone us-central2-b [--worker 0|all] [--lines 100] [--no-follow]
#   launch_tpu/logs.sh --dry-run ...          # print the gcloud command, run nothing
#
# TPU_NAME, TPU_ZONE, TPU_PROJECT may replace the flags.
set -euo pipefail

SCRIPT=logs.sh

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
# shellcheck source=launch_tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKER=0
LINES=100
FOLLOW=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --worker) WORKER=$2; shift 2 ;;
    --lines) LINES=$2; shift 2 ;;
    --no-follow) FOLLOW=0; shift ;;
    *) common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require NAME ZONE
if ! [[ $LINES =~ ^[0-9]+$ ]]; then
  echo "logs.sh: --lines must be a number, got '$LINES'" >&2
  exit 2
fi

tail_cmd="tail -n $LINES"
[[ $FOLLOW == 1 ]] && tail_cmd+=" -F"
cmd=(gcloud compute tpus tpu-vm ssh "$NAME" "--zone=$ZONE" "--worker=$WORKER"
     "--command=$tail_cmd ~/s2d_jax_run.log")
[[ -n $PROJECT ]] && cmd+=("--project=$PROJECT")
run "${cmd[@]}"
