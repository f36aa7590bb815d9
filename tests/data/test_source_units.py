"""A task's source cut into units: a TFDS split at its files, a text file at line-aligned
byte ranges; each unit's examples tokenized in Python equal SeqIO's own."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from store_fixtures import WORDS, build, reference
from t5jax.data import source_units
from t5jax.data import tasks
from t5jax.store import reader


def test_tfds_source_is_cut_at_its_files(t5jax_data_dir, tmp_path):
  from t5jax.data import prepare  # pylint: disable=g-import-not-at-top
  builder = prepare.prepared_builder("t5jax_multi30k")
  task = seqio.Task(
      "store_tfds", source=seqio.TfdsDataSource(
          f"t5jax_multi30k:{builder.VERSION}", tfds_data_dir=str(t5jax_data_dir), read_only=True),
      preprocessors=seqio.get_mixture_or_task("multi30k_en_fr").preprocessors,
      output_features=tasks.output_features())
  units = source_units.plan(task, "validation")
  assert len(units) == len(builder.info.splits["validation"].shard_lengths)
  build(task, str(tmp_path / "store"), split="validation")
  store = reader.ExampleStore.open(str(tmp_path / "store"))
  ref = reference(task, "validation")["inputs"]
  assert store.num_examples == len(ref) == 1014
  got = store.examples("inputs", np.arange(len(ref)))
  assert all(np.array_equal(a, b) for a, b in zip(got, ref))


def _split_examples(task, split, monkeypatch=None, python_tokenize=True):
  """The split's examples as lists; with `monkeypatch`, asserts SentencePiece was called."""
  calls = []
  if monkeypatch is not None:
    real = source_units._encoded  # pylint: disable=protected-access
    monkeypatch.setattr(source_units, "_encoded", lambda *a: calls.append(1) or real(*a))
  out = {k: [x.tolist() for x in v]
         for k, v in reference(task, split, python_tokenize=python_tokenize).items()}
  assert monkeypatch is None or calls
  return out


@pytest.mark.parametrize("name,split", [("multi30k_en_fr", "validation"),
                                        ("text_span_corruption", "validation"),
                                        ("glue_rte", "validation")])
def test_tokenizing_in_python_gives_seqios_ids(t5jax_data_dir, name, split, monkeypatch):
  task = seqio.get_mixture_or_task(name)
  fast = _split_examples(task, split, monkeypatch)
  ref = _split_examples(task, split, python_tokenize=False)
  assert fast.keys() == ref.keys() and fast == ref
  assert sum(len(x) for v in fast.values() for x in v) > 10_000


def test_tokenizing_in_python_gives_seqios_ids_for_odd_texts(monkeypatch):
  texts = ["", "  lead and trail  ", "Ünïcödé ﬁ ① ｆｕｌｌ", "日本語", "tab\there x\r\ny",
           "emoji 😀👍🏽", "a" * 3000]
  raw = [t.encode() for t in texts] + [b"\xff\xfe bad utf8 \xc3"]
  task = seqio.Task(
      "store_odd_texts",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices({"targets": raw}),
          splits=["train"]),
      preprocessors=[functools.partial(seqio.preprocessors.tokenize, with_eos=True)],
      output_features=tasks.output_features())
  fast = _split_examples(task, "train", monkeypatch)["targets"]
  ref = _split_examples(task, "train", python_tokenize=False)["targets"]
  assert fast == ref and len(fast) == len(raw) and all(x[-1] == 1 for x in fast)  # EOS.


def test_a_vocabulary_other_than_sentencepiece_is_tokenized_by_seqio(monkeypatch):
  monkeypatch.setattr(source_units, "_encoded", lambda *a: pytest.fail("not SentencePiece's"))
  task = seqio.Task(
      "store_bytes_vocab",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
              {"targets": ["héllo", "", "world"]}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={"targets": seqio.Feature(seqio.ByteVocabulary())})
  assert _split_examples(task, "train")["targets"] == [
      [b + 3 for b in "héllo".encode()], [], [b + 3 for b in b"world"]]  # 3 special ids


@pytest.mark.parametrize("block", [7, 64, 4 << 20])
def test_text_units_hold_each_line_once_whatever_the_cuts(tmp_path, monkeypatch, block):
  monkeypatch.setattr(source_units, "_READ_BYTES", block)
  rng = np.random.default_rng(block)
  lines = [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(0, 9)))
           for _ in range(300)]
  text = "header\n" + "".join(l + ("\r\n" if i % 7 == 0 else "\n")
                              for i, l in enumerate(lines))[:-1]  # No final line end.
  path = tmp_path / "doc.txt"
  path.write_bytes(text.encode())
  size = path.stat().st_size
  cuts = sorted({0, size, *rng.integers(0, size, 12).tolist(), text.index("\n") + 1})
  got = []
  for a, b in zip(cuts[:-1], cuts[1:]):
    unit = {"kind": "lines", "file": str(path), "start": a, "stop": b, "skip": int(a == 0)}
    got += [x.decode() for batch in source_units._lines(unit) for x in batch]  # pylint: disable=protected-access
  assert got == lines
