"""T5 span corruption (Raffel et al. 2020, sec. 3.1.4), and UL2's mixture of denoisers
(`ul2`, the algorithm in `t5jax.data.ul2`), as SeqIO preprocessors, written for t5jax.

Follows `t5.data.preprocessors.span_corruption`: concatenate tokenized documents, split them into
segments that corrupt to exactly `inputs_length` tokens, drop ~15% of tokens in spans of mean
length 3, replace each dropped span by a sentinel in the inputs and list the spans after their
sentinels in the targets. Sentinels count down from the top of the vocabulary:
`<extra_id_0>` = vocab_size - 1 (32099 for T5).
"""

from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from t5jax.data import noise, ul2 as ul2_lib
from t5jax.data.noise import (MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY,  # noqa: F401
                              span_corruption_lengths)

# Documents concatenated before splitting, as in T5's `reduce_concat_tokens`.
CONCAT_BATCH = 128


def corrupt(tokens: tf.Tensor, seeds: tf.Tensor, vocab_size: int,
            noise_density: float = NOISE_DENSITY,
            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
           ) -> tuple[tf.Tensor, tf.Tensor]:
  """Span-corrupts one token sequence; returns (inputs, targets) without EOS.

  The algorithm is `t5jax.data.noise.corrupt` (one implementation for SeqIO and the batch
  pipeline), keyed by the int `seeds`.
  """
  def run(t, s):
    return noise.corrupt(t, tuple(int(x) for x in s.ravel()), vocab_size, noise_density,
                         mean_noise_span_length)

  inputs, targets = tf.numpy_function(run, [tokens, tf.cast(seeds, tf.int64)],
                                      [tf.int32, tf.int32], stateful=False)
  inputs.set_shape([None])
  targets.set_shape([None])
  return tf.cast(inputs, tokens.dtype), tf.cast(targets, tokens.dtype)


def _concat_tokens(dataset: tf.data.Dataset) -> tf.data.Dataset:
  # Concatenating documents before splitting wastes no tokens on short documents.
  dataset = dataset.map(lambda ex: {"targets": ex["targets"]})
  dataset = dataset.padded_batch(CONCAT_BATCH, padded_shapes={"targets": [-1]})
  return dataset.map(
      lambda ex: {"targets": tf.boolean_mask(tf.reshape(ex["targets"], [-1]),
                                             tf.reshape(ex["targets"], [-1]) > 0)})


def _split_tokens(dataset: tf.data.Dataset, segment_length: int) -> tf.data.Dataset:
  def split(ex):
    tokens = ex["targets"]
    n = tf.size(tokens)
    num_segments = (n + segment_length - 1) // segment_length
    padded = tf.pad(tokens, [[0, num_segments * segment_length - n]])
    segments = tf.reshape(padded, [num_segments, segment_length])
    lengths = tf.minimum(segment_length, n - tf.range(num_segments) * segment_length)
    return tf.data.Dataset.from_tensor_slices((segments, lengths)).map(
        lambda s, k: {"targets": s[:k]})

  return dataset.flat_map(split)


def _token_hash(tokens: tf.Tensor) -> tf.Tensor:
  weights = tf.range(1, tf.size(tokens) + 1, dtype=tf.int64) * 2654435761  # Knuth's constant.
  return tf.reduce_sum(tf.cast(tokens, tf.int64) * weights) % (1 << 31)


def span_corruption(dataset: tf.data.Dataset,
                    sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tf.data.Dataset:
  """SeqIO preprocessor: tokenized "targets" documents -> span-corrupted inputs/targets.

  Run after `seqio.preprocessors.tokenize` and before `append_eos_after_trim`. T5's
  `select_random_chunk` (which caps documents at 65,536 tokens) is left out: no shipped
  document comes close to that.
  """
  tokens_length, targets_length = span_corruption_lengths(
      sequence_length["inputs"], noise_density, mean_noise_span_length)
  if sequence_length["targets"] < targets_length:
    raise ValueError(
        f"targets_length={sequence_length['targets']} is too short for span corruption with "
        f"inputs_length={sequence_length['inputs']}; use targets_length >= {targets_length}")
  vocab_size = output_features["targets"].vocabulary.vocab_size
  dataset = _split_tokens(_concat_tokens(dataset), tokens_length)

  @seqio.map_over_dataset(num_seeds=2)
  def denoise(ex, seeds):
    # SeqIO gives every stream built with the same seed the same seed sequence; the batch
    # pipeline builds one stream per batch row, so mixing in a hash of the tokens keeps the
    # rows' noise masks independent while staying deterministic.
    seeds = tf.cast(seeds, tf.int64) + _token_hash(ex["targets"])
    inputs, targets = corrupt(
        ex["targets"], seeds, vocab_size, noise_density, mean_noise_span_length)
    return {"inputs": inputs, "targets": targets}

  return denoise(dataset)


def ul2(dataset: tf.data.Dataset,
        sequence_length: Mapping[str, int],
        output_features: Mapping[str, seqio.Feature],
        denoisers=ul2_lib.DEFAULT_DENOISERS,
        rates=ul2_lib.DEFAULT_RATES) -> tf.data.Dataset:
  """SeqIO preprocessor: tokenized "targets" documents -> UL2's mixture of denoisers
  (`t5jax.data.ul2`): each example made by one denoiser drawn by `rates`, its inputs
  starting with the denoiser's mode token ([NLU], [NLG], [S2S]).

  Put it where span_corruption goes: after `seqio.preprocessors.tokenize` and the
  `CacheDatasetPlaceholder`, before `append_eos_after_trim`. `denoisers` are (kind,
  mean span, noise density) with kind R, X or S (prefix LM; span and density unused).
  """
  vocab = output_features["targets"].vocabulary
  lengths = (sequence_length["inputs"], sequence_length["targets"])
  mixture = ul2_lib.mixture(vocab, *lengths, denoisers, rates)
  dataset = _split_tokens(_concat_tokens(dataset), mixture.window)

  @seqio.map_over_dataset(num_seeds=1)
  def denoise(ex, seed):
    key = tf.cast(seed[0], tf.int64) + _token_hash(ex["targets"])

    def run(tokens, k):
      inputs, targets, _ = ul2_lib.ul2_example(tokens, int(k), mixture, vocab.vocab_size,
                                               lengths)
      return inputs, targets
    inputs, targets = tf.numpy_function(run, [ex["targets"], key], [tf.int32, tf.int32],
                                        stateful=False)
    inputs.set_shape([None])
    targets.set_shape([None])
    return {"inputs": tf.cast(inputs, ex["targets"].dtype),
            "targets": tf.cast(targets, ex["targets"].dtype)}

  return denoise(dataset)


def fill_sentinels(inputs: np.ndarray, targets: np.ndarray, vocab_size: int,
                   num_sentinels: int = 100) -> np.ndarray:
  """Undoes span corruption: puts each target span back in place of its sentinel.

  Args:
    inputs: corrupted input ids (EOS and padding, ids <= 1, are dropped).
    targets: sentinel-delimited spans, as made by `corrupt`.
    vocab_size: vocabulary size; sentinels are ids counting down from vocab_size - 1.
    num_sentinels: how many top ids are sentinels (T5: the 100 extra ids).

  Returns:
    The original token ids.
  """
  targets = [int(t) for t in targets if t > 1]
  spans: dict[int, list[int]] = {}
  current = None
  for t in targets:
    if vocab_size - num_sentinels <= t < vocab_size:
      current = t
      spans[current] = []
    elif current is None:
      raise ValueError(f"targets must start with a sentinel, got id {t} first")
    else:
      spans[current].append(t)
  restored = []
  for t in inputs:
    t = int(t)
    if t <= 1:
      continue
    if t in spans:
      restored.extend(spans[t])
    else:
      restored.append(t)
  return np.asarray(restored, dtype=np.int32)
