"""Helpers to register a task over your own TSV, JSONL or plain-text file.

    from t5jax.data import user_tasks
    user_tasks.register_tsv_task(
        "my_qa", {"train": "/data/qa_train.tsv", "validation": "/data/qa_dev.tsv"},
        prefix="question: ", skip_header=True)

Put such calls in a module of your own and import it (e.g. with the CLI's module flag) before
naming the task. The task uses t5jax's text cleaning and EOS, like ours, and T5's vocabulary
unless you give your own (`vocabulary=`: a SentencePiece model's path, local or gs://, "byte",
or a seqio.Vocabulary); a run trains on its task's vocabulary and records it with its
checkpoints. `register_mixture` mixes tasks after checking they share one.
"""

import functools
import json
import os
import pathlib
from typing import Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

from t5jax.data import preprocessors
from t5jax.data import span_corruption
from t5jax.data import tasks
from t5jax.data import ul2
from t5jax.data import vocab

Paths = Union[str, pathlib.Path, Mapping[str, Union[str, pathlib.Path]]]


def _split_paths(paths: Paths) -> dict[str, pathlib.Path]:
  """{"split": path}; a single path is the train split. Missing files raise, naming the path."""
  if isinstance(paths, (str, pathlib.Path)):
    paths = {"train": paths}
  resolved = {split: pathlib.Path(p).expanduser() for split, p in paths.items()}
  for split, path in resolved.items():
    if not path.is_file():
      raise FileNotFoundError(f"data file for split {split!r} not found: {path}")
  return resolved


def _split_patterns(paths: Paths) -> dict[str, str]:
  """{"split": absolute path, glob or gs:// URL}; a pattern that matches nothing raises."""
  if isinstance(paths, (str, pathlib.Path)):
    paths = {"train": paths}
  resolved = {}
  for split, p in paths.items():
    p = str(p)
    if not p.startswith("gs://"):
      p = os.path.abspath(os.path.expanduser(p))  # Beam workers may run elsewhere.
    if not tf.io.gfile.glob(p):
      raise FileNotFoundError(f"data file for split {split!r} not found: {p} matches no file")
    resolved[split] = p
  return resolved


# Larger sources are not counted line by line at registration (it would read the corpus).
_COUNT_LINES_UP_TO = 256 << 20


def _count_lines(path: pathlib.Path, skip_header: bool) -> int:
  with open(path, "rb") as f:
    return sum(1 for line in f if line.strip()) - int(skip_header)


def _register(name: str, source: seqio.DataSource, steps: Sequence, metric_fns: Sequence,
              postprocess_fn, vocabulary) -> seqio.Task:
  features = tasks.output_features(vocabulary)  # a bad vocabulary fails before registering
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=list(steps), output_features=features,
      postprocess_fn=postprocess_fn, metric_fns=list(metric_fns))


def register_mixture(name: str, task_names: Sequence[str], rate=1.0) -> seqio.Mixture:
  """Registers mixture `name` of registered tasks, each sampled at `rate` (a number or a
  rate function of `t5jax.data.mixtures`), once they are known to share one vocabulary.

  Raises:
    ValueError: one line naming a task that does not exist, or two whose vocabularies differ.
  """
  from t5jax.data import registry  # pylint: disable=g-import-not-at-top
  vocab.of_tasks([registry.get_task_or_mixture(t) for t in task_names], name)
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, [(t, rate) for t in task_names])


def _prefixed(prefix: str):
  @seqio.map_over_dataset
  def fn(ex):
    return {"inputs": tf.strings.join([prefix, ex["inputs"]]), "targets": ex["targets"]}

  return fn


def register_tsv_task(name: str, paths: Paths, prefix: str = "", inputs_column: int = 0,
                      targets_column: int = 1, skip_header: bool = False,
                      metric_fns: Sequence = (), postprocess_fn=None,
                      vocabulary=None) -> seqio.Task:
  """Registers `name`: one example per TSV line, `prefix + line[inputs_column]` ->
  `line[targets_column]`.

  Args:
    name: the task name.
    paths: a file (the train split) or {split: file}.
    prefix: prepended to the inputs, T5 style (e.g. "summarize: ").
    inputs_column: column of the inputs text.
    targets_column: column of the targets text.
    skip_header: the first line of each file is a header.
    metric_fns: SeqIO metric functions, e.g. `t5jax.data.metrics.bleu`.
    postprocess_fn: SeqIO postprocessor (default: strip the decoded text).
    vocabulary: the SentencePiece model's path (local or gs://; T5's 100 extra ids are
      added), "byte" (ByT5's), a seqio.Vocabulary, or None for T5's.

  Returns:
    The registered `seqio.Task` (registering again replaces it).

  Raises:
    FileNotFoundError, ValueError: a missing data file, a vocabulary file that is missing or
      not a SentencePiece model (one line naming the file).
  """
  files = _split_paths(paths)
  num_columns = max(inputs_column, targets_column) + 1

  @seqio.map_over_dataset
  def parse(line):
    # Quotes are ordinary text in TSV data sets; only tabs separate fields.
    fields = tf.strings.split(line, "\t", maxsplit=num_columns)
    fields = tf.concat([fields, tf.fill([num_columns], "")], 0)  # Short lines: empty fields.
    return {"inputs": fields[inputs_column], "targets": fields[targets_column]}

  source = seqio.TextLineDataSource(
      {split: str(p) for split, p in files.items()},
      skip_header_lines=int(skip_header),
      num_input_examples={s: _count_lines(p, skip_header) for s, p in files.items()})
  return _register(name, source, [parse, _prefixed(prefix)] + _common_steps(), metric_fns,
                   postprocess_fn or _strip, vocabulary)


def register_jsonl_task(name: str, paths: Paths, inputs_key: str, targets_key: str,
                        prefix: str = "", metric_fns: Sequence = (),
                        postprocess_fn=None, vocabulary=None) -> seqio.Task:
  """Registers `name`: one JSON object per line, `prefix + obj[inputs_key]` -> obj[targets_key].

  The file is read into memory when a dataset is built (fine for files up to a few hundred MB).
  `vocabulary` is as `register_tsv_task`'s.
  """
  files = _split_paths(paths)

  def read(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # One file per split; the Task shuffles examples.
    inputs, targets = [], []
    with open(files[split], encoding="utf-8") as f:
      for i, line in enumerate(f, start=1):
        if not line.strip():
          continue
        row = json.loads(line)
        if inputs_key not in row or targets_key not in row:
          raise ValueError(
              f"{files[split]}:{i} lacks key {inputs_key!r} or {targets_key!r}; has {sorted(row)}")
        inputs.append(str(row[inputs_key]))
        targets.append(str(row[targets_key]))
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})

  source = seqio.FunctionDataSource(
      read, splits=list(files),
      num_input_examples={s: _count_lines(p, False) for s, p in files.items()})
  return _register(name, source, [_prefixed(prefix)] + _common_steps(), metric_fns,
                   postprocess_fn or _strip, vocabulary)


OBJECTIVES = {"span_corruption": span_corruption.span_corruption, "ul2": span_corruption.ul2,
              "ul2r": functools.partial(span_corruption.ul2, denoisers=ul2.UL2R_DENOISERS,
                                        rates=ul2.UL2R_RATES)}


def register_text_span_corruption_task(name: str, paths: Paths,
                                       objective: str = "span_corruption",
                                       vocabulary=None) -> seqio.Task:
  """Registers `name`: T5 span corruption (or UL2's mixture of denoisers) over plain text,
  one document per line.

  Args:
    name: the task name.
    paths: a file, a glob ("/data/corpus/*.txt") or a gs:// URL or glob (the train split),
      or {split: any of those}. A corpus over a few hundred MB needs `t5jax cache` first.
    objective: "span_corruption" (T5), "ul2" (the paper's seven denoisers, uniform) or
      "ul2r" (UL2R's continued pretraining: half prefix LM; `t5jax.data.ul2`); for other
      rates, register the task with span_corruption.ul2 partially applied yourself.
    vocabulary: as `register_tsv_task`'s; span corruption's sentinels are its extra ids
      (counting down from the top), so a SentencePiece model needs them (T5's 100 are added).
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r} is not one of {', '.join(OBJECTIVES)}.")
  patterns = _split_patterns(paths)

  @seqio.map_over_dataset
  def to_targets(line):
    return {"targets": line}

  counts = {}
  for split, pattern in patterns.items():
    files = tf.io.gfile.glob(pattern)
    if sum(tf.io.gfile.stat(f).length for f in files) <= _COUNT_LINES_UP_TO and \
        not pattern.startswith("gs://"):
      counts[split] = sum(_count_lines(pathlib.Path(f), False) for f in files)
  source = seqio.TextLineDataSource(
      patterns, num_input_examples=counts if len(counts) == len(patterns) else None)
  # No clean_text, as in T5's C4 task: the T5 SentencePiece model's own normalizer
  # (nmt_nfkc) folds NFKC forms and collapses whitespace, and a corpus-scale build then runs
  # at close to SentencePiece's own rate.
  return _register(
      name, source,
      [to_targets, seqio.preprocessors.tokenize,
       OBJECTIVES[objective], seqio.preprocessors.append_eos_after_trim],
      (), None, vocabulary)


def _common_steps() -> list:
  return [preprocessors.clean_text, seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim]


def _strip(output, example: Optional[Mapping] = None, is_target: bool = False) -> str:
  del example, is_target
  return (output.decode("utf-8") if isinstance(output, bytes) else str(output)).strip()
