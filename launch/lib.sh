# Shared by the launch scripts (sourced): shell quoting for printed commands and the
# one `run` through which every external command goes (printed when DRY_RUN=1).
# slurm_multinode.sbatch keeps its own copy: SLURM runs a copy of the batch script
# from its spool directory, where this file is not beside it.

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
