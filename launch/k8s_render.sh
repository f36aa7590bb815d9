#!/usr/bin/env bash
# Fill in launch/k8s_jobset.yaml (a JobSet of NUM_HOSTS pods, one t5jax process
# per host) and print it, or apply it with kubectl.
#
#   IMAGE=ghcr.io/me/t5jax:gpu RUN_DIR=gs://my-bucket/t5jax/xl NUM_HOSTS=4 \
#     launch/k8s_render.sh                      # print the manifest (the dry run)
#   IMAGE=... RUN_DIR=... launch/k8s_render.sh apply --gin.TrainConfig.batch_size=512
#   launch/k8s_render.sh delete
#
# See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/k8s_render.sh [--dry-run] [render|apply|delete] [T5JAX_TRAIN_ARGS...]

COMMAND (default render)
  render  print the filled-in JobSet manifest (runs nothing)
  apply   write it to $MANIFEST, then kubectl apply -f $MANIFEST
  delete  kubectl delete jobset $NAME

--dry-run (or DRY_RUN=1) prints the kubectl commands instead of running them.

Environment (default):
  NAME              t5jax       JobSet name (a DNS label, at most 40 characters)
  IMAGE             (required)  an image with t5jax and jax[cuda12] (or jax[tpu]) installed
  RUN_DIR           (required)  gs://BUCKET/PATH or a volume every pod mounts
  NUM_HOSTS         2           pods = processes = hosts
  ACCELERATOR       gpu         gpu or tpu
  ACCEL_PER_HOST    8 (gpu), 4 (tpu)  nvidia.com/gpu or google.com/tpu per pod
  TPU_ACCELERATOR   (tpu)       GKE node label, e.g. tpu-v5p-slice, tpu-v5-lite-podslice
  TPU_TOPOLOGY      (tpu)       GKE node label, e.g. 4x4x4 (v5p), 4x8 (v5e)
  NODE_SELECTOR     (none)      extra node labels, KEY=VALUE[,KEY=VALUE...]
  GIN_ARGS          --gin_file=runs/pretrain.gin --gin_file=models/t5_1_1_base.gin
                    --gin_file=mesh/fsdp.gin
  T5JAX             t5jax       the command in the image
  COORDINATOR_PORT  1234
  MAX_RESTARTS      3           JobSet restarts after a failure (each resumes training)
  GRACE_SECONDS     300         time to save a checkpoint after SIGTERM
  XLA_PYTHON_CLIENT_MEM_FRACTION  0.90
  GPU_XLA_FLAGS     latency-hiding scheduler + 128 MiB collective combining (gpu only)
  EXTRA_XLA_FLAGS   (none)      the pods' XLA_FLAGS: GPU_XLA_FLAGS (gpu) then these; your
                                shell's own XLA_FLAGS stay out of the manifest
  NAMESPACE         (kubectl's) passed to kubectl as -n
  MANIFEST          ${TMPDIR:-/tmp}/$NAME.jobset.yaml
  TEMPLATE          launch/k8s_jobset.yaml
EOF
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/lib.sh
source "$REPO_ROOT/launch/lib.sh"

NAME="${NAME:-t5jax}"
IMAGE="${IMAGE:-}"
RUN_DIR="${RUN_DIR:-}"
NUM_HOSTS="${NUM_HOSTS:-2}"
ACCELERATOR="${ACCELERATOR:-gpu}"
ACCEL_PER_HOST="${ACCEL_PER_HOST:-}"
TPU_ACCELERATOR="${TPU_ACCELERATOR:-}"
TPU_TOPOLOGY="${TPU_TOPOLOGY:-}"
NODE_SELECTOR="${NODE_SELECTOR:-}"
GIN_ARGS="${GIN_ARGS:-$DEFAULT_GIN_ARGS}"
T5JAX="${T5JAX:-t5jax}"
COORDINATOR_PORT="${COORDINATOR_PORT:-1234}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
GRACE_SECONDS="${GRACE_SECONDS:-300}"
XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
# Why these flags: launch/lib.sh.
GPU_XLA_FLAGS="${GPU_XLA_FLAGS:-$DEFAULT_GPU_XLA_FLAGS}"
EXTRA_XLA_FLAGS="${EXTRA_XLA_FLAGS:-}"
NAMESPACE="${NAMESPACE:-}"
MANIFEST="${MANIFEST:-${TMPDIR:-/tmp}/$NAME.jobset.yaml}"
TEMPLATE="${TEMPLATE:-$REPO_ROOT/launch/k8s_jobset.yaml}"

# KEY=VALUE[,KEY=VALUE...] -> a YAML flow mapping {"KEY": "VALUE", ...}.
flow_map() {
  local pairs=() item entries=""
  IFS=, read -r -a pairs <<<"$1"
  for item in ${pairs[@]+"${pairs[@]}"}; do
    [[ $item =~ ^([A-Za-z0-9./_-]+)=([A-Za-z0-9._-]*)$ ]] \
      || die "NODE_SELECTOR entry '$item' is not KEY=VALUE (letters, digits, . _ - /)."
    entries+="${entries:+, }\"${BASH_REMATCH[1]}\": \"${BASH_REMATCH[2]}\""
  done
  printf '{%s}' "$entries"
}

# Checks the inputs and sets every value the template names (render reads them
# by name, which shellcheck cannot see).
# shellcheck disable=SC2034
resolve() {
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ && ${#NAME} -le 40 ]] \
    || die "NAME=$NAME must be a DNS label (a-z, 0-9, -) of at most 40 characters."
  [[ -n $IMAGE ]] || die "set IMAGE to a container image with t5jax installed."
  [[ $IMAGE =~ ^[A-Za-z0-9./:@_-]+$ ]] || die "IMAGE=$IMAGE is not an image reference."
  [[ -n $RUN_DIR ]] || die "set RUN_DIR to gs://BUCKET/PATH or a volume every pod mounts."
  local var
  for var in NUM_HOSTS COORDINATOR_PORT MAX_RESTARTS GRACE_SECONDS; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var=${!var} must be a non-negative integer."
  done
  (( NUM_HOSTS >= 1 )) || die "NUM_HOSTS must be at least 1."

  local selector="$NODE_SELECTOR"
  JOBSET_ANNOTATIONS_MAP="{}"
  case $ACCELERATOR in
    gpu)
      ACCEL_RESOURCE=nvidia.com/gpu
      ACCEL_PER_HOST="${ACCEL_PER_HOST:-8}"
      XLA_FLAGS="$GPU_XLA_FLAGS${EXTRA_XLA_FLAGS:+ $EXTRA_XLA_FLAGS}" ;;
    tpu)
      ACCEL_RESOURCE=google.com/tpu
      ACCEL_PER_HOST="${ACCEL_PER_HOST:-4}"
      XLA_FLAGS="$EXTRA_XLA_FLAGS"
      [[ -n $TPU_ACCELERATOR && -n $TPU_TOPOLOGY ]] \
        || die "ACCELERATOR=tpu needs TPU_ACCELERATOR (e.g. tpu-v5p-slice) and TPU_TOPOLOGY (e.g. 4x4x4)."
      selector="cloud.google.com/gke-tpu-accelerator=$TPU_ACCELERATOR,cloud.google.com/gke-tpu-topology=$TPU_TOPOLOGY${selector:+,$selector}"
      # All pods on one slice's node pool: hosts of different slices share no ICI.
      JOBSET_ANNOTATIONS_MAP='{"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}' ;;
    *) die "ACCELERATOR=$ACCELERATOR must be gpu or tpu." ;;
  esac
  [[ $ACCEL_PER_HOST =~ ^[1-9][0-9]*$ ]] || die "ACCEL_PER_HOST=$ACCEL_PER_HOST must be a positive integer."
  [[ $XLA_FLAGS != *[\"\\]* ]] || die "XLA flags must not contain \" or \\."
  [[ $XLA_PYTHON_CLIENT_MEM_FRACTION =~ ^[0-9.]+$ ]] \
    || die "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION is not a number."
  NODE_SELECTOR_MAP="$(flow_map "$selector")"

  local gin_args=()
  read -r -d '' -a gin_args <<<"$GIN_ARGS" || true
  TRAIN_COMMAND="$(quote "$T5JAX" train ${gin_args[@]+"${gin_args[@]}"} --run_dir="$RUN_DIR" "$@")"
}

TEMPLATE_VARIABLES=(NAME IMAGE NUM_HOSTS ACCEL_RESOURCE ACCEL_PER_HOST NODE_SELECTOR_MAP
  JOBSET_ANNOTATIONS_MAP COORDINATOR_PORT MAX_RESTARTS GRACE_SECONDS XLA_FLAGS
  XLA_PYTHON_CLIENT_MEM_FRACTION TRAIN_COMMAND)

# The template with ${VARIABLE} replaced by its value (envsubst, limited to our names).
render() {
  local script=() var value manifest
  for var in "${TEMPLATE_VARIABLES[@]}"; do
    value="${!var}"
    [[ $value != *$'\n'* ]] || die "$var must be one line."
    value="$(printf '%s' "$value" | sed -e 's/[\\&|]/\\&/g')"
    script+=(-e "s|\\\${$var}|$value|g")
  done
  manifest="$(sed "${script[@]}" "$TEMPLATE")"
  if [[ $manifest =~ \$\{[A-Za-z_][A-Za-z0-9_]*\} ]]; then
    die "$TEMPLATE: ${BASH_REMATCH[0]} has no value; k8s_render.sh fills only: ${TEMPLATE_VARIABLES[*]}."
  fi
  printf '%s\n' "$manifest"
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
  local command=render
  if (( ${#args[@]} )) && [[ ${args[0]} != -* ]]; then
    command="${args[0]}"
    args=("${args[@]:1}")
  fi
  local kubectl=(kubectl)
  [[ -n $NAMESPACE ]] && kubectl+=(-n "$NAMESPACE")
  case $command in
    render)
      resolve ${args[@]+"${args[@]}"}
      render ;;
    apply)
      resolve ${args[@]+"${args[@]}"}
      render >"$MANIFEST"
      echo "k8s_render.sh: manifest in $MANIFEST" >&2
      run "${kubectl[@]}" apply -f "$MANIFEST" ;;
    delete)
      (( ${#args[@]} == 0 )) || die "'delete' takes no arguments (got: ${args[*]})."
      run "${kubectl[@]}" delete jobset "$NAME" ;;
    *) usage >&2; die "unknown command '$command'." ;;
  esac
}

main "$@"
