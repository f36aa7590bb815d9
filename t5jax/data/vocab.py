"""Vocabularies: T5's shipped SentencePiece model, a user's own (mT5's, UMT5's, one trained
for a language), ByT5's bytes; which one a task or mixture uses; and how a run records it
so that its checkpoints decode with what they were trained on.

A run directory holds the SentencePiece model as the user gave it (`spiece.model`, byte for
byte) and the checkpoint's metadata says what it is (`record`); `load` turns that back into
the vocabulary, on local disk or in a bucket.
"""

from __future__ import annotations

import functools
import hashlib

import seqio

from t5jax import fs
from t5jax.data import assets

EXTRA_IDS = 100
# 32,000 pieces + 100 sentinels.
VOCAB_SIZE = 32100
# T5 checkpoints pad the embedding table to a multiple of 128 so it shards evenly.
EMBEDDING_VOCAB_SIZE = 32128
# ByT5: 3 special ids (pad, EOS, UNK), 256 bytes and 125 sentinels = 384 ids, as Hugging
# Face's ByT5Tokenizer and the published checkpoints' embedding tables have them.
BYTE_EXTRA_IDS = 125
SPIECE_NAME = "spiece.model"
T5_SPIECE = "t5_spm/spiece.model"


@functools.cache
def get_vocabulary() -> seqio.SentencePieceVocabulary:
  """Returns the T5 vocabulary (32,000 pieces + 100 extra ids = 32,100)."""
  return seqio.SentencePieceVocabulary(str(assets.asset_path(T5_SPIECE)), extra_ids=EXTRA_IDS)


def byte_vocabulary(extra_ids: int = BYTE_EXTRA_IDS) -> seqio.ByteVocabulary:
  """ByT5's: UTF-8 bytes as ids 3..258, then `extra_ids` sentinels."""
  return _byte_vocabulary(extra_ids)


@functools.cache
def _byte_vocabulary(extra_ids: int) -> seqio.ByteVocabulary:
  return seqio.ByteVocabulary(extra_ids=extra_ids)


def sentencepiece(path, extra_ids: int = EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """A SentencePiece model file (local or gs://) with `extra_ids` sentinels added as T5 adds
  them (at the top of the vocabulary, counting down).

  Raises:
    ValueError: one line naming the file: it does not exist or is not a SentencePiece model.
  """
  path = fs.check(path, "Vocabulary")
  if not fs.isfile(path):
    raise ValueError(f"Vocabulary file {path} does not exist; give the SentencePiece model "
                     "(e.g. spiece.model) of your vocabulary.")
  local = fs.local_copy(path)
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  try:
    model = spm.SentencePieceProcessor(model_file=local)
  except (RuntimeError, OSError) as e:
    reason = " ".join(str(e).split())[:200]
    raise ValueError(f"Vocabulary file {path} is not a SentencePiece model ({reason}); give "
                     "the .model file that spm_train wrote (not its .vocab).") from None
  if (model.pad_id(), model.eos_id()) != (0, 1):
    # T5's masks and decoding take id 0 for padding and 1 for EOS.
    raise ValueError(
        f"Vocabulary file {path} has pad id {model.pad_id()} and EOS id {model.eos_id()}; T5 "
        "needs pad 0 and EOS 1: train it with pad_id=0 eos_id=1 unk_id=2 bos_id=-1.")
  return _sentencepiece(local, extra_ids)


@functools.cache
def _sentencepiece(local: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(local, extra_ids=extra_ids)


def resolve(vocabulary) -> seqio.Vocabulary:
  """A seqio.Vocabulary from what a user may give: one already, "t5", "byte", or the path of
  a SentencePiece model (local or gs://; T5's 100 extra ids added)."""
  if isinstance(vocabulary, seqio.Vocabulary):
    return vocabulary
  if vocabulary in (None, "t5"):
    return get_vocabulary()
  if vocabulary == "byte":
    return byte_vocabulary()
  return sentencepiece(str(vocabulary))


def _model_bytes(vocabulary: seqio.SentencePieceVocabulary) -> bytes:
  return fs.read_bytes(vocabulary.sentencepiece_model_file)


def identity(vocabulary: seqio.Vocabulary) -> dict:
  """What makes two vocabularies the same: the kind, the model's bytes (by hash), the
  extra ids and the size."""
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return {"kind": "byte", "extra_ids": int(vocabulary.extra_ids),
            "size": int(vocabulary.vocab_size)}
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return {"kind": "sentencepiece",
            "sha256": hashlib.sha256(_model_bytes(vocabulary)).hexdigest(),
            "extra_ids": int(vocabulary.extra_ids), "size": int(vocabulary.vocab_size)}
  raise ValueError(f"{type(vocabulary).__name__} is not a vocabulary t5jax can record; use a "
                   "seqio.SentencePieceVocabulary or seqio.ByteVocabulary.")


def same(a: seqio.Vocabulary, b: seqio.Vocabulary) -> bool:
  return a is b or identity(a) == identity(b)


def describe(vocabulary: seqio.Vocabulary) -> str:
  """A few words naming a vocabulary, for messages."""
  size = f"{vocabulary.vocab_size:,} ids"
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return f"bytes, ByT5's ({size})"
  if same(vocabulary, get_vocabulary()):
    return f"T5's SentencePiece model ({size})"
  return f"the SentencePiece model {vocabulary.sentencepiece_model_file} ({size})"


def describe_record(record: dict) -> str:
  """A few words naming a recorded vocabulary (a checkpoint's)."""
  if record.get("kind") == "byte":
    return f"bytes, ByT5's ({record['size']:,} ids)"
  size = f" ({record['size']:,} ids)" if "size" in record else ""
  if record.get("sha256") == identity(get_vocabulary())["sha256"] or not record.get("kind"):
    return f"T5's SentencePiece model{size}"
  return f"its own SentencePiece model {record.get('file', SPIECE_NAME)}{size}"


def of_task(task: seqio.Task) -> seqio.Vocabulary:
  """The one vocabulary of an encoder-decoder task (its inputs and targets share the
  model's embedding table).

  Raises:
    ValueError: its features have different vocabularies.
  """
  features = task.output_features
  targets = features["targets"].vocabulary if "targets" in features else None
  inputs = features["inputs"].vocabulary if "inputs" in features else targets
  if targets is None:
    return inputs
  if not same(inputs, targets):
    raise ValueError(f"task {task.name!r} tokenizes its inputs with {describe(inputs)} and its "
                     f"targets with {describe(targets)}; T5 shares one embedding table, so "
                     "register it with one vocabulary.")
  return targets


def of_tasks(tasks, name: str) -> seqio.Vocabulary:
  """The vocabulary the tasks of mixture `name` share.

  Raises:
    ValueError: two of them differ (one line naming both and their vocabularies).
  """
  first = None
  for task in tasks:
    vocabulary = of_task(task)
    if first is None:
      first = (task, vocabulary)
    elif not same(first[1], vocabulary):
      raise ValueError(
          f"mixture {name!r} mixes vocabularies: task {first[0].name!r} uses "
          f"{describe(first[1])} but {task.name!r} uses {describe(vocabulary)}; register its "
          "tasks with one vocabulary, or set InputSpec.vocabulary to tokenize them all with one.")
  return first[1]


def record(vocabulary: seqio.Vocabulary, run_dir: str | None) -> dict:
  """What a checkpoint's metadata says of its vocabulary; a SentencePiece model is copied
  into `run_dir` as spiece.model, byte for byte (None: the caller copies nothing)."""
  entry = identity(vocabulary)
  if entry["kind"] == "sentencepiece":
    entry["file"] = SPIECE_NAME
    if run_dir is not None:
      target = fs.join(run_dir, SPIECE_NAME)
      data = _model_bytes(vocabulary)
      if not fs.isfile(target) or fs.read_bytes(target) != data:
        fs.write_bytes(target, data)
  return entry


def load(root: str, entry: dict | None) -> seqio.Vocabulary:
  """The vocabulary a checkpoint was trained with, from its metadata's `vocab` entry and
  the directory `root` that holds its checkpoints/ (and spiece.model).

  Checkpoints written before vocabularies were recorded name none (or, converted from
  Hugging Face, {"sentencepiece": "spiece.model" | "t5jax:t5"}): their own spiece.model if
  they have one, else T5's.
  """
  entry = entry or {}
  if entry.get("kind") == "byte":
    return byte_vocabulary(entry.get("extra_ids", BYTE_EXTRA_IDS))
  own = fs.join(root, entry.get("file", SPIECE_NAME))
  if entry.get("kind") == "sentencepiece" or entry.get("sentencepiece") == SPIECE_NAME:
    return sentencepiece(own, entry.get("extra_ids", EXTRA_IDS))
  if entry.get("sentencepiece") != "t5jax:t5" and fs.isfile(own):
    return sentencepiece(own, entry.get("extra_ids", EXTRA_IDS))
  return get_vocabulary()
