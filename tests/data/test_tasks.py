"""Every registered task yields well-formed examples in T5's text format; metrics are right."""

import importlib

import numpy as np
import pytest
import seqio

from t5jax.data import metrics
from t5jax.data import postprocessors
from t5jax.data import preprocessors
from t5jax.data import tasks
from t5jax.data import vocab

PREFIXES = {
    "multi30k_en_fr": "translate English to French: ",
    "multi30k_en_de": "translate English to German: ",
    "glue_cola": "cola sentence: ",
    "glue_sst2": "sst2 sentence: ",
    "glue_rte": "rte sentence1: ",
    "scitldr": "summarize: ",
    "dialogsum": "summarize: ",
    "dialogsum_next_turn": "next turn: #Person",
    "xquad_en": "question: ",
}
LABELS = {
    "glue_cola": {"acceptable", "unacceptable"},
    "glue_sst2": {"positive", "negative"},
    "glue_rte": {"entailment", "not_entailment"},
}
LENGTHS = {"inputs": 128, "targets": 64}


def _examples(name, split="validation", n=4):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      LENGTHS, split=split, shuffle=False, seed=0, num_epochs=1)
  return list(ds.take(n).as_numpy_iterator())


def test_registered_names():
  assert set(tasks.SUPERVISED_TASKS) == set(PREFIXES)
  for name in tasks.SUPERVISED_TASKS + tasks.PRETRAINING_TASKS:
    task = seqio.get_mixture_or_task(name)
    assert task.output_features["inputs"].vocabulary.vocab_size == 32100
    assert task.output_features["targets"].add_eos


def test_reimport_is_idempotent():
  importlib.reload(tasks)
  assert "multi30k_en_fr" in seqio.TaskRegistry.names()


@pytest.mark.parametrize("name", sorted(PREFIXES))
def test_task_examples_are_well_formed(t5jax_data_dir, name):
  del t5jax_data_dir
  v = vocab.get_vocabulary()
  for ex in _examples(name):
    inputs_text = ex["inputs_pretokenized"].decode()
    targets_text = ex["targets_pretokenized"].decode()
    assert inputs_text.startswith(PREFIXES[name]), inputs_text[:80]
    assert targets_text and targets_text == targets_text.strip()
    assert "  " not in inputs_text and "\n" not in inputs_text  # Cleaned.
    for key in ("inputs", "targets"):
      tokens = ex[key]
      assert tokens.dtype == np.int32 and 2 <= len(tokens) <= LENGTHS[key]
      assert tokens[-1] == 1 and 1 not in tokens[:-1]  # EOS once, at the end.
    if len(ex["inputs"]) < LENGTHS["inputs"]:  # Not truncated: tokens decode to the text.
      assert v.decode(ex["inputs"].tolist()) == inputs_text
    if name in LABELS:
      assert targets_text in LABELS[name]


def test_multi30k_first_validation_pair(t5jax_data_dir):
  del t5jax_data_dir
  fr = _examples("multi30k_en_fr", n=1000)
  de = _examples("multi30k_en_de", n=1000)
  assert len(fr) == len(de) == 1000
  # Same English side, different target language.
  assert [e["inputs_pretokenized"][29:] for e in fr] == [e["inputs_pretokenized"][29:] for e in de]


def test_multi_reference_targets(t5jax_data_dir):
  del t5jax_data_dir
  ex = _examples("dialogsum", n=1)[0]
  refs = postprocessors.references("references")(b"", example=ex, is_target=True)
  assert len(refs) == 3 and refs[0] == ex["targets_pretokenized"].decode()
  ex = _examples("xquad_en", n=1)[0]
  answers = postprocessors.references("answers")(b"", example=ex, is_target=True)
  assert ex["targets_pretokenized"].decode() == answers[0]


def test_glue_postprocessor_maps_labels():
  post = postprocessors.label_to_int(("unacceptable", "acceptable"))
  assert [post(b"acceptable"), post(b" unacceptable "), post(b"maybe")] == [1, 0, -1]


def test_clean_string():
  text = preprocessors.clean_string(" A\u00a0b\t\tc\x07d\n\uff26ull-width\u2003 ")
  assert text.numpy().decode() == "A b c d Full-width"


def test_metrics_on_known_values():
  assert metrics.bleu(["a cat sat on the mat"], ["a cat sat on the mat"])["bleu"] == pytest.approx(100)
  assert metrics.accuracy([1, 0, 1, 1], [1, 0, 0, 1])["accuracy"] == 75.0
  # tp=2, tn=1, fp=1, fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6.
  mcc = metrics.matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])["matthews_corrcoef"]
  assert mcc == pytest.approx(100 / 6)
  assert metrics.matthews_corrcoef([1, 0], [-1, -1])["matthews_corrcoef"] == pytest.approx(-100)
  r = metrics.rouge([["the cat sat", "a dog ran"]], ["a dog ran"])
  assert r == {"rouge1": pytest.approx(100), "rouge2": pytest.approx(100),
               "rougeL": pytest.approx(100)}
  s = metrics.squad([["The Broncos", "Broncos"], ["Denver"]], ["broncos", "Denver Broncos"])
  assert s["em"] == pytest.approx(50) and s["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
