"""Registering a task over one's own files and feeding it through make_batches."""

import itertools
import json

import numpy as np
import pytest
import seqio

from t5jax.data import pipeline
from t5jax.data import span_corruption
from t5jax.data import user_tasks
from t5jax.data import vocab
from t5jax.data.pipeline import InputSpec


@pytest.fixture
def registered():
  names = []
  yield names
  for name in names:
    seqio.TaskRegistry.remove(name)


def _first_segment_texts(batch):
  v = vocab.get_vocabulary()
  seg = batch["encoder_segment_ids"][0]
  inputs = v.decode(batch["encoder_input_tokens"][0][seg == 1].tolist())
  seg = batch["decoder_segment_ids"][0]
  targets = v.decode(batch["decoder_target_tokens"][0][seg == 1].tolist())
  return inputs, targets


def test_tsv_task_through_make_batches(tmp_path, registered):
  words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
  path = tmp_path / "pairs.tsv"
  path.write_text("source\ttarget\n" + "".join(f"{w}  word\t{w[::-1]}\n" for w in words))
  user_tasks.register_tsv_task("my_reverse", path, prefix="reverse: ", skip_header=True)
  registered.append("my_reverse")
  assert seqio.get_mixture_or_task("my_reverse").num_input_examples("train") == 8
  spec = InputSpec("my_reverse", inputs_length=16, targets_length=8, seed=2)
  batches = list(itertools.islice(pipeline.make_batches(spec, 4), 3))
  assert batches[0]["encoder_input_tokens"].shape == (4, 16)
  inputs, targets = _first_segment_texts(batches[0])
  word = inputs.removeprefix("reverse: ").removesuffix(" word")
  assert word in words and targets == word[::-1]  # Cleaned: "  " became " ".


def test_jsonl_task(tmp_path, registered):
  path = tmp_path / "qa.jsonl"
  rows = [{"q": f"what is {i} plus {i}?", "a": str(2 * i)} for i in range(12)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  user_tasks.register_jsonl_task("my_sums", {"train": path}, "q", "a", prefix="question: ")
  registered.append("my_sums")
  spec = InputSpec("my_sums", inputs_length=24, targets_length=4, pack=False)
  batch = next(pipeline.make_batches(spec, 4))
  inputs, targets = _first_segment_texts(batch)
  assert inputs.startswith("question: what is ") and int(targets) % 2 == 0


def test_text_span_corruption_task(tmp_path, registered):
  path = tmp_path / "docs.txt"
  path.write_text("".join(f"Document number {i} talks about the weather in town {i}.\n"
                          for i in range(40)))
  user_tasks.register_text_span_corruption_task("my_span_corruption", path)
  registered.append("my_span_corruption")
  spec = InputSpec("my_span_corruption", inputs_length=32, targets_length=16, pack=False)
  b = next(pipeline.make_batches(spec, 4))
  restored = [span_corruption.fill_sentinels(b["encoder_input_tokens"][r],
                                             b["decoder_target_tokens"][r], 32100)
              for r in range(4)]
  lengths = [len(r) for r in restored]
  # Documents are concatenated and cut into equal segments; only the last is shorter.
  full = span_corruption.span_corruption_lengths(32)[0]
  assert max(lengths) == full and lengths.count(full) >= 3, lengths
  assert all("weather in town" in vocab.get_vocabulary().decode(r.tolist()) for r in restored
             if len(r) == full)


def test_missing_file_names_the_path(tmp_path):
  missing = tmp_path / "nope.tsv"
  with pytest.raises(FileNotFoundError, match=f"split 'train' not found: {missing}"):
    user_tasks.register_tsv_task("my_missing", missing)


def test_text_task_with_the_ul2r_objective(tmp_path, registered):
  path = tmp_path / "docs.txt"
  path.write_text("".join(f"Document number {i} talks about the weather in town {i}.\n"
                          for i in range(400)))
  user_tasks.register_text_span_corruption_task("my_ul2r", path, objective="ul2r")
  registered.append("my_ul2r")
  spec = InputSpec("my_ul2r", inputs_length=256, targets_length=256, pack=False)
  rows = [row for b in itertools.islice(pipeline.make_batches(spec, 16), 10)
          for row in b["encoder_input_tokens"]]
  modes = [vocab.get_vocabulary().decode(r[:8].tolist())[:5] for r in rows]
  assert set(modes) == {"[NLU]", "[NLG]", "[S2S]"}
  # Half prefix LM: 160 draws at p = 0.5 lie within 4 sigma (0.158) of it.
  assert abs(modes.count("[S2S]") / len(modes) - 0.5) < 0.16, modes.count("[S2S]")
