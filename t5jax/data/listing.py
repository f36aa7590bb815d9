"""A table of every registered task and mixture, for `t5jax tasks`."""

import seqio

from t5jax.data import mixtures  # Importing registers t5jax's tasks and mixtures.


def _count(task: seqio.Task, split: str) -> str:
  try:
    n = task.num_input_examples(split)
  except Exception:  # noqa: BLE001 - a TFDS dataset the user has not prepared (e.g. C4)
    return "(not prepared)"
  return f"{n:,}" if n is not None else "?"


def _metrics(task: seqio.Task) -> str:
  names = [getattr(f, "__name__", type(f).__name__) for f in task.metric_fns]
  return ", ".join(names) or "-"


def format_registry() -> str:
  """Every registered task (splits with example counts from TFDS metadata, metrics) and
  mixture (tasks with normalised rates), as an aligned text table.

  The first call prepares any shipped dataset not yet in the data dir.
  """
  rows = [("TASK", "SPLITS (EXAMPLES)", "METRICS")]
  for name in sorted(seqio.TaskRegistry.names()):
    task = seqio.TaskRegistry.get(name)
    splits = "  ".join(f"{s} {_count(task, s)}" for s in task.splits)
    rows.append((name, splits, _metrics(task)))
  width = [max(len(r[i]) for r in rows) for i in range(2)]
  lines = [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}".rstrip() for r in rows]
  lines += ["", "MIXTURE / TASKS (RATE)"]
  for name in sorted(seqio.MixtureRegistry.names()):
    mixture = seqio.MixtureRegistry.get(name)
    lines.append(name)
    for task_name, rate in mixtures.normalized_rates(mixture).items():
      lines.append(f"  {task_name:<{width[0]}}  {rate:.4f}")
  return "\n".join(lines)
