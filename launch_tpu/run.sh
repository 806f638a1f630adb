#!/usr/bin/env bash
# Bring this repository to every worker of a TPU VM slice, set up its venv, start the run.
#
#   launch_tpu/run.sh --name s2d --zone us-central2-b \
#       --config configs/paper.py --workdir /mnt/shared/runs/paper [-- --more main.py flags]
#   launch_tpu/run.sh ... --dry-run           # print every command, run nothing
#   launch_tpu/run.sh ... --no-setup          # reuse the workers' code and venv as they are
#   launch_tpu/run.sh --name s2d --zone ... --stop   # stop the run started here
#
# Steps: pack the repository (no .venv, runs, .git), copy it to ~/s2d_jax on --worker=all,
# create ~/s2d_jax/.venv and `pip install -e .[tpu]` there, then start
# `python -m s2d_jax.main --distributed --config ... --workdir ...` on every worker in the
# background (log ~/s2d_jax_run.log, pid ~/s2d_jax_run.pid; follow it with logs.sh).
# --workdir must be storage that every worker sees (orbax checkpoints are written by all).
# TPU_NAME, TPU_ZONE, TPU_PROJECT may replace the flags.
set -euo pipefail

SCRIPT=run.sh
UNKNOWN_HINT=" (flags for main.py go after --)"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
# shellcheck source=launch_tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE=${TMPDIR:-/tmp}/s2d_jax_repo.tgz
CONFIG=""
WORKDIR=""
SETUP=1
STOP=0
MAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --no-setup) SETUP=0; shift ;;
    --stop) STOP=1; shift ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require NAME ZONE
if [[ $STOP == 0 ]]; then
  if [[ -z $CONFIG || -z $WORKDIR ]]; then
    echo "run.sh: --config and --workdir are required" >&2
    exit 2
  fi
  # The config is read on the workers from the copied tree: check it exists here first.
  if [[ ! -f $REPO/${CONFIG%%:*} ]]; then
    echo "run.sh: config file '${CONFIG%%:*}' not found under $REPO" >&2
    exit 2
  fi
fi

gcloud_args=("--zone=$ZONE")
[[ -n $PROJECT ]] && gcloud_args+=("--project=$PROJECT")
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${gcloud_args[@]}" --worker=all "--command=$1"
}

if [[ $STOP == 1 ]]; then
  # shellcheck disable=SC2016  # expanded on the workers, not here
  on_all_workers 'if [ -f ~/s2d_jax_run.pid ]; then kill "$(cat ~/s2d_jax_run.pid)" || true; fi'
  exit 0
fi

if [[ $SETUP == 1 ]]; then
  run tar -czf "$ARCHIVE" -C "$REPO" --exclude=./.venv --exclude=./runs --exclude=./.git \
    --exclude=__pycache__ --exclude='*.egg-info' .
  run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME:~/s2d_jax.tgz" "${gcloud_args[@]}" \
    --worker=all
  # Ubuntu images may lack python3-venv; pip then brings jax[tpu] (libtpu) from PyPI.
  on_all_workers 'set -e; mkdir -p ~/s2d_jax && tar -xzf ~/s2d_jax.tgz -C ~/s2d_jax && cd ~/s2d_jax; if [ ! -x .venv/bin/python ]; then python3 -m venv .venv || { sudo apt-get update -q && sudo apt-get install -y -q python3-venv && python3 -m venv .venv; }; fi; .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e ".[tpu]"'
fi

printf -v main_cmd '%q ' .venv/bin/python -m s2d_jax.main --distributed "--config=$CONFIG" \
  "--workdir=$WORKDIR" "${MAIN_ARGS[@]}"
# nohup + redirected stdio: the ssh session returns while the run goes on.
on_all_workers "cd ~/s2d_jax && nohup ${main_cmd}> ~/s2d_jax_run.log 2>&1 < /dev/null & echo \$! > ~/s2d_jax_run.pid"
