# Shared by the launch scripts (sourced right after they set REPO_ROOT): their common
# defaults, `die`, shell quoting for printed commands and the one `run` through which
# every external command goes (printed when DRY_RUN=1).
# slurm_multinode.sbatch keeps its own copy: SLURM runs a copy of the batch script
# from its spool directory, where this file is not beside it.

DRY_RUN="${DRY_RUN:-0}"
DEFAULT_GIN_ARGS="--gin_file=runs/pretrain.gin --gin_file=models/t5_1_1_base.gin --gin_file=mesh/fsdp.gin"
# The latency-hiding scheduler overlaps FSDP's all-gathers / reduce-scatters and
# data parallelism's all-reduces with compute. FSDP issues one collective per
# parameter; combining them into buffers of up to 128 MiB keeps NCCL at bandwidth
# rather than latency. (All four flags are known to the jaxlib that pyproject
# pins; an unknown flag makes XLA abort at start-up.)
DEFAULT_GPU_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 \
--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728 \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728"

# The lower bound of pyproject's pin ("jax>=0.10.2,<0.11"): the version we test.
pyproject_jax_version() {
  sed -n 's/.*"jax>=\([0-9.]*\),.*/\1/p' "$REPO_ROOT/pyproject.toml"
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# ARGS as one line that a shell reads back as the same words.
quote() {
  local out=() a
  for a in "$@"; do out+=("$(quote_word "$a")"); done
  printf '%s' "${out[*]}"
}

quote_word() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--?[A-Za-z0-9_.-]+=|[A-Za-z_][A-Za-z0-9_]*=)(.+)$ ]]; then  # --flag="v", VAR="v"
    printf '%s%s' "${BASH_REMATCH[1]}" "$(quote_string "${BASH_REMATCH[2]}")"
  else
    quote_string "$1"
  fi
}

quote_string() {  # "..." when nothing inside is special there, else '...'
  if [[ $1 != *[\"\$\`\\!]* ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Every external command goes through here: printed when dry, else logged and run.
# `run --exec CMD` replaces this shell, so SIGTERM (preemption) reaches t5jax,
# which then saves a checkpoint and exits 0.
run() {
  local replace=0
  if [[ $1 == --exec ]]; then replace=1; shift; fi
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$(quote "$@")"
  else
    printf '+ %s\n' "$(quote "$@")" >&2
    if (( replace )); then exec "$@"; else "$@"; fi
  fi
}
