"""Registers t5jax's SeqIO tasks over the shipped data (importing this module does it).

Every task uses the T5 vocabulary, features `inputs`/`targets` with EOS, and T5's text format
(InputSpec.vocabulary tokenizes them with another, e.g. mT5's). Re-importing (or reloading)
replaces the registrations instead of failing.
"""

import functools
import os

import seqio
import tensorflow as tf

from t5jax.data import metrics
from t5jax.data import postprocessors
from t5jax.data import preprocessors
from t5jax.data import rank_classification
from t5jax.data import span_corruption
from t5jax.data import tf_devices
from t5jax.data import vocab
from t5jax.data.sources import ShippedTfdsSource

tf_devices.hide_accelerators_from_tf()


def output_features(vocabulary=None) -> dict[str, seqio.Feature]:
  """`inputs` and `targets` with EOS appended, tokenized with `vocabulary` (anything
  `vocab.resolve` takes; default T5's)."""
  v = vocab.resolve(vocabulary)
  return {
      "inputs": seqio.Feature(vocabulary=v, add_eos=True),
      "targets": seqio.Feature(vocabulary=v, add_eos=True),
  }


def text_preprocessors(format_fn) -> list:
  """`format_fn` (source -> inputs/targets text) then cleaning, tokenization and EOS."""
  return [
      format_fn,
      preprocessors.clean_text,
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]


def _add(name: str, **kwargs) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, output_features=output_features(), **kwargs)


_GLUE = {
    # name: (dataset, benchmark, text keys, label names, metric)
    "glue_cola": ("t5jax_glue_cola", "cola", ("sentence",), ("unacceptable", "acceptable"),
                  metrics.matthews_corrcoef),
    "glue_sst2": ("t5jax_glue_sst2", "sst2", ("sentence",), ("negative", "positive"),
                  metrics.accuracy),
    "glue_rte": ("t5jax_glue_rte", "rte", ("sentence1", "sentence2"),
                 ("entailment", "not_entailment"), metrics.accuracy),
}

RANK_TASKS = ("glue_cola_rank", "glue_sst2_rank", "glue_rte_rank")
SUPERVISED_TASKS = (
    "multi30k_en_fr", "multi30k_en_de", "glue_cola", "glue_sst2", "glue_rte", "scitldr",
    "dialogsum", "dialogsum_next_turn", "xquad_en",
)
PRETRAINING_TASKS = ("text_span_corruption",)
# UL2's mixture of denoisers over the shipped text (not in multitask_mix).
UL2_TASKS = ("text_ul2",)
# C4 as T5 pretrained on it (t5's c4_v220_span_corruption); the user prepares it with TFDS.
C4_TASKS = ("c4_span_corruption",)
C4_TFDS_NAME = "c4/en:3.0.1"
C4_DATA_DIR_ENV = "T5JAX_C4_DATA_DIR"


def register() -> None:
  """(Re-)registers every t5jax task."""
  for name, fn in (("multi30k_en_fr", preprocessors.translate_en_fr),
                   ("multi30k_en_de", preprocessors.translate_en_de)):
    _add(name, source=ShippedTfdsSource("t5jax_multi30k"),
         preprocessors=text_preprocessors(fn),
         postprocess_fn=postprocessors.strip_text, metric_fns=[metrics.bleu])

  for name, (dataset, benchmark, keys, labels, metric) in _GLUE.items():
    _add(name, source=ShippedTfdsSource(dataset),
         preprocessors=text_preprocessors(preprocessors.glue(benchmark, keys, labels)),
         postprocess_fn=postprocessors.label_to_int(labels), metric_fns=[metric])

  # The same GLUE validation sets by rank classification: each label scored, the best one
  # predicted (evaluation only: a task to train on would see the wrong labels too).
  for name, (dataset, benchmark, keys, labels, _) in _GLUE.items():
    _add(f"{name}_rank", source=ShippedTfdsSource(dataset, splits=("validation",)),
         preprocessors=[
             rank_classification.preprocessor(
                 preprocessors.glue_inputs(benchmark, keys),
                 lambda ex, labels=labels: tf.constant(list(labels)),
                 lambda ex: ex["label"]),
             preprocessors.clean_text,
             seqio.preprocessors.tokenize,
             seqio.preprocessors.append_eos_after_trim,
         ],
         postprocess_fn=rank_classification.postprocess,
         metric_fns=[rank_classification.rank_accuracy])

  _add("scitldr", source=ShippedTfdsSource("t5jax_scitldr"),
       preprocessors=text_preprocessors(preprocessors.scitldr),
       postprocess_fn=postprocessors.references("references"), metric_fns=[metrics.rouge])
  _add("dialogsum", source=ShippedTfdsSource("t5jax_dialogsum"),
       preprocessors=text_preprocessors(preprocessors.dialogsum),
       postprocess_fn=postprocessors.references("references"), metric_fns=[metrics.rouge])
  _add("dialogsum_next_turn", source=ShippedTfdsSource("t5jax_dialogsum_next_turn"),
       preprocessors=text_preprocessors(preprocessors.dialogsum_next_turn),
       postprocess_fn=postprocessors.strip_text, metric_fns=[metrics.rouge])
  _add("xquad_en", source=ShippedTfdsSource("t5jax_xquad_en"),
       preprocessors=text_preprocessors(preprocessors.squad),
       postprocess_fn=postprocessors.references("answers"), metric_fns=[metrics.squad])

  # T5's span corruption, and UL2's mixture of denoisers (t5jax.data.ul2, the paper's
  # settings), over the shipped text.
  for name, objective in (("text_span_corruption", span_corruption.span_corruption),
                          ("text_ul2", span_corruption.ul2)):
    _add(name, source=ShippedTfdsSource("t5jax_text"),
         preprocessors=[
             preprocessors.text_to_targets,
             preprocessors.clean_text,
             seqio.preprocessors.tokenize,
             seqio.CacheDatasetPlaceholder(),
             objective,
             seqio.preprocessors.append_eos_after_trim,
         ],
         metric_fns=[])

  # No cleaning: T5 tokenized C4's text as it is. The TFDS data dir (local or gs://) is
  # $T5JAX_C4_DATA_DIR, else TFDS's own default ($TFDS_DATA_DIR, ~/tensorflow_datasets).
  _add("c4_span_corruption",
       source=seqio.TfdsDataSource(C4_TFDS_NAME, tfds_data_dir=os.environ.get(C4_DATA_DIR_ENV),
                                   splits=("train", "validation"), read_only=True),
       preprocessors=[
           preprocessors.text_to_targets,
           seqio.preprocessors.tokenize,
           seqio.CacheDatasetPlaceholder(),
           span_corruption.span_corruption,
           seqio.preprocessors.append_eos_after_trim,
       ],
       metric_fns=[])


register()
