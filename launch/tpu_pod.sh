#!/usr/bin/env bash
# Train t5jax on a Cloud TPU pod slice (or, with NUM_SLICES > 1, on a multislice
# queued resource): create the TPU, set up every worker, run the same
# `t5jax train` on every worker, stop it, delete the TPU.
#
#   DRY_RUN=1 launch/tpu_pod.sh run              # print the commands, run nothing
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh setup
#   RUN_DIR=gs://my-bucket/t5jax/base launch/tpu_pod.sh run --gin.TrainConfig.batch_size=256
#   launch/tpu_pod.sh delete
#
# Every worker runs the identical command with T5JAX_DISTRIBUTED=auto, so
# jax.distributed.initialize() finds the pod's coordinator, process count and
# process id from the TPU metadata by itself. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh [--dry-run] COMMAND [T5JAX_TRAIN_ARGS...]

COMMAND
  create   gcloud compute tpus tpu-vm create (NUM_SLICES > 1: queued-resources create)
  setup    on every worker: get the code (git clone REPO_URL, or copy this checkout),
           install Python, then pip install -e . "jax[tpu]==<pyproject's jax>"
  run      on every worker: T5JAX_DISTRIBUTED=auto t5jax train $GIN_ARGS --run_dir=$RUN_DIR ARGS
  stop     SIGTERM every worker's t5jax train (it saves a checkpoint and exits 0)
  delete   delete the TPU (or the queued resource and its slices)

--dry-run (or DRY_RUN=1) prints every command instead of running it.

Environment (default):
  TPU_NAME          t5jax-pod             TPU (or queued resource) name
  ZONE              us-central2-b
  PROJECT           (gcloud's default)
  ACCELERATOR_TYPE  v4-32                 e.g. v4-64, v5litepod-64, v5p-128, v6e-64
  RUNTIME_VERSION   tpu-ubuntu2204-base   v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5,
                                          v6e: v2-alpha-tpuv6e
  NUM_SLICES        1                     > 1: a multislice queued resource of that many slices
  REPO_URL          (empty: copy this checkout's package, gin_configs and pyproject.toml)
  REPO_REF          origin/HEAD           with REPO_URL: commit, tag or origin/BRANCH to check out
  REMOTE_DIR        t5jax                 checkout on each worker, relative to its home
  REMOTE_PYTHON     python3.11            installed with apt if missing (t5jax needs >= 3.11)
  JAX_VERSION       pyproject's lower bound of jax
  RUN_DIR           (required for run)    gs://BUCKET/PATH: every worker must see it
  GIN_ARGS          --gin_file=runs/pretrain.gin --gin_file=models/t5_1_1_base.gin
                    --gin_file=mesh/fsdp.gin
  DETACH            0                     1: run under nohup, output in REMOTE_DIR/train.log
EOF
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/lib.sh
source "$REPO_ROOT/launch/lib.sh"

TPU_NAME="${TPU_NAME:-t5jax-pod}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
NUM_SLICES="${NUM_SLICES:-1}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-origin/HEAD}"
REMOTE_DIR="${REMOTE_DIR:-t5jax}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3.11}"
RUN_DIR="${RUN_DIR:-}"
GIN_ARGS="${GIN_ARGS:-$DEFAULT_GIN_ARGS}"
DETACH="${DETACH:-0}"
JAX_VERSION="${JAX_VERSION:-$(pyproject_jax_version)}"

# gcloud's location flags, and the ssh/scp target: one slice, or all slices of a
# queued resource.
where=(--zone="$ZONE")
[[ -n $PROJECT ]] && where+=(--project="$PROJECT")

on_all_workers() {  # on_all_workers REMOTE_SHELL_COMMAND
  if (( NUM_SLICES > 1 )); then
    run gcloud compute tpus queued-resources ssh "$TPU_NAME" "${where[@]}" \
      --node=all --worker=all --command="$1"
  else
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
  fi
}

copy_to_all_workers() {  # copy_to_all_workers LOCAL_FILE REMOTE_PATH
  if (( NUM_SLICES > 1 )); then
    run gcloud compute tpus queued-resources scp "$1" "$TPU_NAME:$2" "${where[@]}" \
      --node=all --worker=all
  else
    run gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "${where[@]}" --worker=all
  fi
}

cmd_create() {
  if (( NUM_SLICES > 1 )); then
    # Multislice needs a queued resource; its slices are TPU_NAME-0 .. TPU_NAME-(N-1).
    run gcloud compute tpus queued-resources create "$TPU_NAME" "${where[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
      --node-count="$NUM_SLICES" --node-prefix="$TPU_NAME"
    echo "tpu_pod.sh: queued; wait for state ACTIVE:" \
         "gcloud compute tpus queued-resources describe $TPU_NAME --zone=$ZONE" >&2
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
  fi
}

cmd_setup() {
  [[ -n $JAX_VERSION ]] || die "cannot read jax's version from $REPO_ROOT/pyproject.toml; set JAX_VERSION."
  local dir get_code
  dir="$(quote "$REMOTE_DIR")"
  if [[ -n $REPO_URL ]]; then
    get_code="{ [ -d $dir/.git ] || git clone -q $(quote "$REPO_URL") $dir; }"
    get_code+=" && git -C $dir fetch -q origin && git -C $dir checkout -q --detach $(quote "$REPO_REF")"
  else
    # What `pip install -e .` and the gin lookup need; no .venv, runs or caches.
    local tarball="${TMPDIR:-/tmp}/t5jax-src-$TPU_NAME.tgz"
    run tar -czf "$tarball" --exclude=__pycache__ -C "$REPO_ROOT" \
      pyproject.toml README.md t5jax gin_configs
    copy_to_all_workers "$tarball" /tmp/t5jax-src.tgz
    get_code="mkdir -p $dir && tar -xzf /tmp/t5jax-src.tgz -C $dir"
  fi
  local py pip project="$dir"
  [[ $REMOTE_DIR == /* ]] || project="./$dir"  # pip -e wants a path, not a name
  py="$(quote "$REMOTE_PYTHON")"
  pip="$dir/.venv/bin/pip"
  on_all_workers "$get_code \
&& { command -v $py >/dev/null || { sudo apt-get update -qq \
&& sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $py $py-venv; }; } \
&& { [ -x $dir/.venv/bin/python ] || $py -m venv $dir/.venv; } \
&& $pip install -q --upgrade pip \
&& $pip install -q -e $project 'jax[tpu]==$JAX_VERSION' \
&& $dir/.venv/bin/python -c 'import jax, t5jax; print(jax.__version__)'"
}

cmd_run() {
  [[ -n $RUN_DIR ]] || die "set RUN_DIR=gs://BUCKET/PATH (every worker reads and writes the same checkpoints)."
  [[ $RUN_DIR == gs://* ]] || echo "tpu_pod.sh: warning: RUN_DIR=$RUN_DIR is not gs://; every" \
    "worker must see the same directory (a shared mount), or checkpoints break." >&2
  if (( NUM_SLICES > 1 )) && [[ "$GIN_ARGS $*" != *multislice* ]]; then
    echo "tpu_pod.sh: warning: $NUM_SLICES slices but no mesh/multislice.gin;" \
         "an fsdp axis across slices puts parameter all-gathers on the slow DCN links." >&2
  fi
  local gin_args=() train
  read -r -d '' -a gin_args <<<"$GIN_ARGS" || true
  train="$(quote .venv/bin/t5jax train ${gin_args[@]+"${gin_args[@]}"} --run_dir="$RUN_DIR" "$@")"
  if [[ $DETACH == 1 ]]; then
    train="nohup $train > train.log 2>&1 < /dev/null &"
  fi
  on_all_workers "cd $(quote "$REMOTE_DIR") && T5JAX_DISTRIBUTED=auto $train"
}

cmd_stop() {
  # '[t]5jax train' matches the trainer but not this ssh command line itself.
  on_all_workers "pkill -TERM -f '[t]5jax train' || true"
}

cmd_delete() {
  if (( NUM_SLICES > 1 )); then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet
  fi
}

main() {
  local args=() a
  for a in "$@"; do
    case $a in
      --dry-run) DRY_RUN=1 ;;
      -h|--help) usage; exit 0 ;;
      *) args+=("$a") ;;
    esac
  done
  (( ${#args[@]} )) || { usage >&2; exit 2; }
  [[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES=$NUM_SLICES must be a positive integer."
  local command="${args[0]}"
  args=("${args[@]:1}")
  case $command in
    create|setup|stop|delete)
      (( ${#args[@]} == 0 )) || die "'$command' takes no arguments (got: ${args[*]})."
      "cmd_$command" ;;
    run) cmd_run ${args[@]+"${args[@]}"} ;;
    *) usage >&2; die "unknown command '$command'." ;;
  esac
}

main "$@"
