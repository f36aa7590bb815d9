#!/usr/bin/env bash
# Train t5jax on one machine with N GPUs: one process drives every local GPU
# (JAX's default; no jax.distributed needed), with XLA flags that matter for
# sharded training on GPUs.
#
#   DRY_RUN=1 launch/gpu_single_host.sh          # print the commands, run nothing
#   launch/gpu_single_host.sh setup              # .venv with t5jax and jax[cuda12]
#   launch/gpu_single_host.sh run --gin.TrainConfig.batch_size=256
#   NUM_GPUS=4 GIN_ARGS="--gin_file=runs/pretrain.gin --gin_file=models/t5_1_1_large.gin \
#     --gin_file=mesh/fsdp_tp.gin" launch/gpu_single_host.sh run
#
# See launch/README.md for picking the mesh.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu_single_host.sh [--dry-run] [setup|run] [T5JAX_TRAIN_ARGS...]

COMMAND (default run)
  setup   create $VENV and pip install -e . "jax[cuda12]==<pyproject's jax>"
  run     t5jax train $GIN_ARGS --run_dir=$RUN_DIR ARGS, with the GPU environment below

--dry-run (or DRY_RUN=1) prints every command instead of running it.

Environment (default):
  NUM_GPUS                        (all)   use GPUs 0..NUM_GPUS-1 (sets CUDA_VISIBLE_DEVICES)
  RUN_DIR                         runs/gpu
  GIN_ARGS                        --gin_file=runs/pretrain.gin --gin_file=models/t5_1_1_base.gin
                                  --gin_file=mesh/fsdp.gin
  XLA_PYTHON_CLIENT_MEM_FRACTION  0.90    share of each GPU's memory JAX preallocates
  GPU_XLA_FLAGS                   latency-hiding scheduler + 128 MiB collective combining
  XLA_FLAGS                       (none)  appended after GPU_XLA_FLAGS; the last value wins
  VENV                            .venv   (relative to the repository root)
  PYTHON                          python3 for setup (3.11+)
  JAX_VERSION                     pyproject's lower bound of jax
  T5JAX                           $VENV/bin/t5jax if present, else t5jax on PATH
EOF
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/lib.sh
source "$REPO_ROOT/launch/lib.sh"

NUM_GPUS="${NUM_GPUS:-}"
RUN_DIR="${RUN_DIR:-runs/gpu}"
GIN_ARGS="${GIN_ARGS:-$DEFAULT_GIN_ARGS}"
# JAX preallocates 75% by default; training wants more, and TensorFlow (under
# SeqIO) is kept off the GPUs by t5jax, so little else needs GPU memory.
XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
# Why these flags: launch/lib.sh.
GPU_XLA_FLAGS="${GPU_XLA_FLAGS:-$DEFAULT_GPU_XLA_FLAGS}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
JAX_VERSION="${JAX_VERSION:-$(pyproject_jax_version)}"

cmd_setup() {
  [[ -n $JAX_VERSION ]] || die "cannot read jax's version from pyproject.toml; set JAX_VERSION."
  [[ -x $VENV/bin/python ]] || run "$PYTHON" -m venv "$VENV"
  run "$VENV/bin/pip" install -q --upgrade pip
  run "$VENV/bin/pip" install -q -e . "jax[cuda12]==$JAX_VERSION"
  run "$VENV/bin/python" -c "import jax; print(jax.__version__, jax.devices())"
}

cmd_run() {
  local t5jax="${T5JAX:-}"
  if [[ -z $t5jax ]]; then
    if [[ -x $VENV/bin/t5jax ]]; then t5jax="$VENV/bin/t5jax"; else t5jax=t5jax; fi
  fi
  local environment=(
    XLA_FLAGS="$GPU_XLA_FLAGS${XLA_FLAGS:+ $XLA_FLAGS}"
    XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION"
  )
  if [[ -n $NUM_GPUS ]]; then
    [[ $NUM_GPUS =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS=$NUM_GPUS must be a positive integer."
    local visible=0 i
    for (( i = 1; i < NUM_GPUS; i++ )); do visible+=",$i"; done
    environment+=(CUDA_VISIBLE_DEVICES="$visible")
  fi
  local gin_args=()
  read -r -d '' -a gin_args <<<"$GIN_ARGS" || true
  run --exec env "${environment[@]}" "$t5jax" train ${gin_args[@]+"${gin_args[@]}"} \
    --run_dir="$RUN_DIR" "$@"
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
  local command=run
  if (( ${#args[@]} )) && [[ ${args[0]} != -* ]]; then
    command="${args[0]}"
    args=("${args[@]:1}")
  fi
  # Gin files, $VENV and runs/ resolve from the repository root; a dry run cds too.
  run cd "$REPO_ROOT"
  cd "$REPO_ROOT"
  case $command in
    setup)
      (( ${#args[@]} == 0 )) || die "'setup' takes no arguments (got: ${args[*]})."
      cmd_setup ;;
    run) cmd_run ${args[@]+"${args[@]}"} ;;
    *) usage >&2; die "unknown command '$command'." ;;
  esac
}

main "$@"
