"""The run's vocabulary: its tasks' own, or the one InputSpec.vocabulary names, checked
against the model's embedding table, the checkpoint it starts from and the run it resumes.
Nothing falls back to T5's English vocabulary behind the user's back."""

from __future__ import annotations

import contextlib
from typing import Iterator

import seqio

from t5jax import checkpoint, fs
from t5jax.data import pipeline, registry, vocab


def _requested(spec: pipeline.InputSpec, init_from: str | None) -> seqio.Vocabulary | None:
  """InputSpec.vocabulary resolved (None: the tasks' own)."""
  if spec.vocabulary is None:
    return None
  if spec.vocabulary == "init_from":
    if not init_from:
      raise ValueError("InputSpec.vocabulary='init_from' takes the vocabulary of the checkpoint "
                       "you fine-tune; give it with --init_from CKPT (or "
                       "CheckpointConfig.init_from).")
    return of_checkpoint(init_from)
  return vocab.resolve(spec.vocabulary)


def of_checkpoint(path: str) -> seqio.Vocabulary:
  """The vocabulary a checkpoint (a run or converted directory) was trained with."""
  meta = checkpoint.read_meta(path)
  return vocab.load(fs.parent(checkpoint.checkpoints_dir(path)), meta.get("vocab"))


@contextlib.contextmanager
def for_run(spec: pipeline.InputSpec, eval_mixture_or_task: str | None,
            init_from: str | None) -> Iterator[seqio.Vocabulary]:
  """Yields the vocabulary the run trains on; with InputSpec.vocabulary set, its tasks (and
  the evaluation's) are tokenized with that one meanwhile.

  Raises:
    ValueError: the tasks of the mixture disagree (one line naming two of them), or the
      requested vocabulary cannot be loaded.
  """
  requested = _requested(spec, init_from)
  names = {spec.mixture_or_task, eval_mixture_or_task or spec.mixture_or_task}
  with contextlib.ExitStack() as stack:
    if requested is not None:
      for name in sorted(names):
        stack.enter_context(registry.tokenized_with(name, requested))
    for name in sorted(names):
      tasks = seqio.get_subtasks(registry.get_task_or_mixture(name))
      found = vocab.of_tasks(tasks, name)
      if name == spec.mixture_or_task:
        vocabulary = found
    yield vocabulary


def check_model(vocabulary: seqio.Vocabulary, embedding_rows: int, model: str) -> None:
  """Raises ValueError (one line naming both sizes) if the vocabulary has more ids than
  the model's embedding table has rows."""
  if vocabulary.vocab_size > embedding_rows:
    padded = -(-vocabulary.vocab_size // 128) * 128
    raise ValueError(
        f"The vocabulary ({vocab.describe(vocabulary)}) has {vocabulary.vocab_size:,} ids but "
        f"model {model} has {embedding_rows:,} embedding rows; use a model made for it or set "
        f"--gin.ModelSettings.vocab_size={padded} (padded to a multiple of 128).")


def check_same(vocabulary: seqio.Vocabulary, meta: dict, source: str, allow: bool) -> None:
  """Raises ValueError (one line naming both vocabularies) if checkpoint `source` (its
  metadata `meta`) was trained on another vocabulary than the run's, unless `allow`."""
  recorded = _recorded(meta)
  if recorded is None or allow or _matches(recorded, vocabulary):
    return
  raise ValueError(
      f"Checkpoint {source} was trained on {vocab.describe_record(recorded)} but this run's "
      f"tasks use {vocab.describe(vocabulary)}; tokenize them with the checkpoint's "
      "(--gin.InputSpec.vocabulary=\"'init_from'\"), or set "
      "--gin.CheckpointConfig.vocabulary_change=True to adapt the model to a new vocabulary.")


def _recorded(meta: dict) -> dict | None:
  """A checkpoint's vocabulary record, legacy ones included (None: not known)."""
  entry = meta.get("vocab") or {}
  if entry.get("kind"):
    return entry
  if entry.get("sentencepiece") == "t5jax:t5" or ("size" in entry and "sentencepiece" not in entry):
    return vocab.identity(vocab.get_vocabulary())  # written before vocabularies were recorded
  return None  # converted with its own spiece.model: compared by the run's check of sizes


def _matches(recorded: dict, vocabulary: seqio.Vocabulary) -> bool:
  current = vocab.identity(vocabulary)
  return all(recorded.get(k) == current.get(k) for k in ("kind", "sha256", "extra_ids"))
