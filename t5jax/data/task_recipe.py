"""A task's recipe for the batch pipeline: its store and its per-example steps, checked at
the batch's lengths, as plain data (`example_ops.TaskRecipe`) that worker processes read
with numpy alone."""

from __future__ import annotations

import seqio

from t5jax.data import example_ops
from t5jax.data import noise
from t5jax.data import task_steps
from t5jax.data import task_store
from t5jax.data import ul2


def recipe(task: seqio.Task, split: str, lengths: dict,
           process_index: int = 0) -> example_ops.TaskRecipe:
  """The recipe of (task, split) at these lengths; builds the task's store if needed.

  Raises:
    ValueError: (one line) for a per-example step t5jax does not implement, a task without
      `inputs`/`targets`, or lengths too short for span corruption.
  """
  _, post = task_steps.split_preprocessors(task)
  ops = []
  for i, step in enumerate(post):
    op = task_steps.identify(step)
    if op is None or (op[0] in (example_ops.SPAN_CORRUPTION, example_ops.UL2) and i):
      name = getattr(step, "__name__", repr(step))
      raise ValueError(
          f"task {task.name!r} runs {name} after its CacheDatasetPlaceholder; the batch pipeline "
          "runs per example only span_corruption or ul2 (first) and append_eos[_after_trim]: move "
          f"{name} before the placeholder if it is deterministic")
    ops.append(op)
  for feature in ("inputs", "targets"):
    if feature not in task.output_features:
      raise ValueError(
          f"task {task.name!r} has no {feature!r} feature; encoder-decoder training needs both")
  if ops and ops[0][0] == example_ops.SPAN_CORRUPTION:
    _, targets_needed = noise.span_corruption_lengths(
        lengths["inputs"], **example_ops.span_args(ops[0][1]))
    if lengths["targets"] < targets_needed:
      raise ValueError(
          f"targets_length={lengths['targets']} is too short for span corruption with "
          f"inputs_length={lengths['inputs']}; use targets_length >= {targets_needed}")
  if ops and ops[0][0] == example_ops.UL2:
    # The denoisers at these lengths (checked, one line each), resolved once here with
    # the vocabulary: workers rebuild them from the recipe's JSON alone.
    kwargs = dict(ops[0][1])
    mixture = ul2.mixture(task.output_features["targets"].vocabulary, lengths["inputs"],
                          lengths["targets"], kwargs.get("denoisers", ul2.DEFAULT_DENOISERS),
                          kwargs.get("rates", ul2.DEFAULT_RATES))
    kwargs = {"resolved": [[d.kind, d.mean_span, d.density, d.segment, list(d.mode_ids)]
                           for d in mixture.denoisers],
              "resolved_rates": mixture.rates.tolist()}
    ops[0] = (example_ops.UL2, kwargs)
  return example_ops.TaskRecipe(
      name=task.name, store=task_store.ensure(task, split, process_index).location,
      ops=tuple(ops),
      lengths={"inputs": int(lengths["inputs"]), "targets": int(lengths["targets"])},
      eos={k: int(f.vocabulary.eos_id) for k, f in task.output_features.items() if f.add_eos},
      vocab_size=int(task.output_features["targets"].vocabulary.vocab_size))
