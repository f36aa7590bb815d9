"""SeqIO preprocessors shared by the t5jax tasks: text formatting and cleaning.

Formatting preprocessors turn a source example into `{"inputs": str, "targets": str}` (plus any
reference fields the metrics need); `clean_text` normalises them; SeqIO's `tokenize` and
`append_eos_after_trim` follow in every task.
"""

from typing import Sequence

import seqio
import tensorflow as tf
import tensorflow_text as tf_text


def clean_string(text: tf.Tensor) -> tf.Tensor:
  """NFKC-normalises, turns control characters into spaces, collapses and strips whitespace."""
  # NFKC folds compatibility forms (full-width letters, ligatures, non-breaking spaces) into
  # the forms the SentencePiece model was trained on.
  text = tf_text.normalize_utf8(text, "NFKC")
  text = tf.strings.regex_replace(text, r"\p{Cc}", " ")
  text = tf.strings.regex_replace(text, r"\s+", " ")
  return tf.strings.strip(text)


@seqio.map_over_dataset
def clean_text(ex):
  """Applies `clean_string` to every string feature (inputs, targets and references alike)."""
  return {k: clean_string(v) if v.dtype == tf.string else v for k, v in ex.items()}


def _join(*parts) -> tf.Tensor:
  return tf.strings.join(list(parts))


@seqio.map_over_dataset
def translate_en_fr(ex):
  return {"inputs": _join("translate English to French: ", ex["en"]), "targets": ex["fr"]}


@seqio.map_over_dataset
def translate_en_de(ex):
  return {"inputs": _join("translate English to German: ", ex["en"]), "targets": ex["de"]}


def glue_inputs(benchmark: str, text_keys: Sequence[str]):
  """Returns example -> T5's GLUE inputs, `<benchmark> <key>: <text> ...`."""

  def fn(ex):
    parts = [benchmark]
    for key in text_keys:
      parts += [f"{key}:", ex[key]]
    return tf.strings.reduce_join(tf.stack(parts), separator=" ")

  return fn


def glue(benchmark: str, text_keys: Sequence[str], label_names: Sequence[str]):
  """Returns a preprocessor giving T5's GLUE format: `<benchmark> <key>: <text> ...` -> label."""
  inputs = glue_inputs(benchmark, text_keys)

  @seqio.map_over_dataset
  def fn(ex):
    return {
        "inputs": inputs(ex),
        "targets": tf.gather(tf.constant(list(label_names)), ex["label"]),
    }

  return fn


@seqio.map_over_dataset
def scitldr(ex):
  # Train on the first (author) TLDR; keep all of them as references for ROUGE.
  return {
      "inputs": _join("summarize: ", ex["source"]),
      "targets": ex["target"][0],
      "references": ex["target"],
  }


@seqio.map_over_dataset
def dialogsum(ex):
  return {
      "inputs": _join("summarize: ", ex["dialogue"]),
      "targets": ex["summaries"][0],
      "references": ex["summaries"],
  }


# Only the most recent turns: SeqIO trims inputs at the end, which would otherwise cut off the
# turns nearest to the one being predicted.
MAX_HISTORY_TURNS = 6


@seqio.map_over_dataset
def dialogsum_next_turn(ex):
  history = ex["history"][-MAX_HISTORY_TURNS:]
  return {
      "inputs": _join("next turn: ", tf.strings.reduce_join(history, separator=" ")),
      "targets": ex["next_turn"],
  }


@seqio.map_over_dataset
def squad(ex):
  return {
      "inputs": _join("question: ", ex["question"], " context: ", ex["context"]),
      "targets": ex["answers"][0],
      "answers": ex["answers"],
  }


@seqio.map_over_dataset
def text_to_targets(ex):
  # Span corruption makes both features out of the tokenized "targets".
  return {"targets": ex["text"]}
