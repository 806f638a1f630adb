#!/usr/bin/env bash
# Follow the log of the run started by run.sh on one worker (process 0 writes the metrics).
#
#   launch_tpu/logs.sh --name s2d --zone us-central2-b [--worker 0|all] [--lines 100] [--no-follow]
#   launch_tpu/logs.sh --dry-run ...          # print the gcloud command, run nothing
#
# TPU_NAME, TPU_ZONE, TPU_PROJECT may replace the flags.
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
WORKER=0
LINES=100
FOLLOW=1
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --worker) WORKER=$2; shift 2 ;;
    --lines) LINES=$2; shift 2 ;;
    --no-follow) FOLLOW=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "logs.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for var in NAME ZONE; do
  if [[ -z ${!var} ]]; then
    echo "logs.sh: --$(tr '[:upper:]' '[:lower:]' <<<"$var") (or TPU_$var) is required" >&2
    exit 2
  fi
done
if ! [[ $LINES =~ ^[0-9]+$ ]]; then
  echo "logs.sh: --lines must be a number, got '$LINES'" >&2
  exit 2
fi

# --dry-run prints each command as a shell line (words quoted only where needed) instead.
run() {
  if [[ $DRY_RUN == 0 ]]; then "$@"; return; fi
  local word words=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then words+=("$word")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}

tail_cmd="tail -n $LINES"
[[ $FOLLOW == 1 ]] && tail_cmd+=" -F"
cmd=(gcloud compute tpus tpu-vm ssh "$NAME" "--zone=$ZONE" "--worker=$WORKER"
     "--command=$tail_cmd ~/s2d_jax_run.log")
[[ -n $PROJECT ]] && cmd+=("--project=$PROJECT")
run "${cmd[@]}"
