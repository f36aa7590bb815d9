"""T5 span-corruption noise in numpy, keyed by example (no tf.data stream needed).

The batch pipeline corrupts example k of a task's stream with randomness keyed by
(seed, task, k) (`index_random`), so any example of any epoch can be made on its own. The
algorithm is T5's (`t5jax.data.span_corruption`, the SeqIO preprocessor, is the same in
TensorFlow): noise and non-noise tokens are each split into the same number of random
non-empty spans, interleaved non-noise first; each noise span becomes one sentinel in the
inputs and the targets list the spans after their sentinels.
"""

import math

import numpy as np

from t5jax.data import index_random

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
# T5's vocabulary has 100 sentinels (<extra_id_0> .. <extra_id_99>).
MAX_SENTINELS = 100


def _corrupted_lengths(tokens_length: int, noise_density: float,
                       mean_noise_span_length: float) -> tuple[int, int]:
  num_noise_tokens = int(round(tokens_length * noise_density))
  num_nonnoise_tokens = tokens_length - num_noise_tokens
  num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
  # Inputs keep the non-noise tokens plus one sentinel per span; targets hold the noise
  # tokens plus one sentinel per span; both end with EOS.
  return (num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1)


def span_corruption_lengths(inputs_length: int,
                            noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                           ) -> tuple[int, int]:
  """T5's `random_spans_helper`: how many raw tokens fill `inputs_length` after corruption.

  Args:
    inputs_length: encoder length, EOS included (e.g. 512).
    noise_density: fraction of tokens dropped.
    mean_noise_span_length: mean length of a dropped span.

  Returns:
    (tokens_length_before_noise, targets_length), e.g. (568, 114) for 512.
  """
  if inputs_length < 2:
    raise ValueError(f"inputs_length={inputs_length} is too short for span corruption; use >= 2")
  tokens_length = inputs_length - 1
  while _corrupted_lengths(tokens_length + 1, noise_density,
                           mean_noise_span_length)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)
  # T5's tweak so that targets are not longer than inputs at density 0.5.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _random_segment_lengths_np(num_items: int, num_segments: int, keys) -> np.ndarray:
  """Lengths of `num_segments` non-empty random segments of `num_items` (sum num_items)."""
  num_segments = max(1, min(num_segments, num_items))
  scores = index_random.uniform(*keys, np.arange(num_items - 1))
  starts = np.sort(np.argpartition(scores, num_segments - 2)[:num_segments - 1] + 1
                   if num_segments > 1 else np.zeros([0], np.int64))
  return np.diff(np.concatenate([[0], starts, [num_items]]))


def replace_spans(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """Each noise span replaced by one sentinel (counting down from the vocabulary's top)."""
  prev = np.concatenate([[False], noise_mask[:-1]])
  first = noise_mask & ~prev
  sentinels = vocab_size - np.cumsum(first)
  return np.where(first, sentinels, tokens)[~(noise_mask & prev)].astype(np.int32)


def noise_mask(length: int, keys: tuple, noise_density: float = NOISE_DENSITY,
               mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
               span_count_keys: tuple | None = None) -> np.ndarray:
  """bool [length]: noise spans, the first token never noise, randomness keyed by `keys`.

  The number of spans is T5's, noise / mean span rounded; with `span_count_keys` it is
  rounded stochastically instead (the ceiling with the fraction's probability, keyed), so
  that the mean span is `mean_noise_span_length` on average (UL2's long spans).
  """
  orig_length = length
  length = max(length, 2)  # At least one noise and one non-noise token.
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  if span_count_keys is None:
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  else:
    x = num_noise / mean_noise_span_length
    num_spans = int(math.floor(x)) + int(index_random.uniform(*span_count_keys) < x - math.floor(x))
    num_spans = max(1, min(num_spans, num_noise, length - num_noise))
  noise_lengths = _random_segment_lengths_np(num_noise, num_spans, (*keys, 0))
  nonnoise_lengths = _random_segment_lengths_np(length - num_noise, num_spans, (*keys, 1))
  num_spans = min(len(noise_lengths), len(nonnoise_lengths))
  interleaved = np.stack([nonnoise_lengths[:num_spans], noise_lengths[:num_spans]], 1).ravel()
  span_index = np.repeat(np.arange(2 * num_spans), interleaved)
  mask = np.zeros(length, bool)
  mask[:len(span_index)] = span_index % 2 == 1
  return mask[:orig_length]


def corrupt(tokens: np.ndarray, keys: tuple, vocab_size: int,
            noise_density: float = NOISE_DENSITY,
            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
           ) -> tuple[np.ndarray, np.ndarray]:
  """Span-corrupts one token sequence, its randomness keyed by `keys`.

  Returns:
    (inputs, targets) int32 without EOS.
  """
  tokens = np.asarray(tokens)
  mask = noise_mask(len(tokens), keys, noise_density, mean_noise_span_length)
  return (replace_spans(tokens, mask, vocab_size),
          replace_spans(tokens, ~mask, vocab_size))


def corrupt_batch(tokens_nl: np.ndarray, keys_n: np.ndarray, salt: int, vocab_size: int,
                  noise_density: float = NOISE_DENSITY,
                  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                 ) -> tuple[np.ndarray, np.ndarray]:
  """`corrupt` of n sequences of one length at once (keys `(keys_n[i], salt)`): the same
  outputs, vectorised over the rows (span corruption's segments all have one length but
  the split's last).

  Returns:
    (inputs [n, ...], targets [n, ...]) int32 without EOS.
  """
  n, length = tokens_nl.shape
  if length < 2:
    return tuple(np.stack(x) for x in zip(*(
        corrupt(t, (k, salt), vocab_size, noise_density, mean_noise_span_length)
        for t, k in zip(tokens_nl, keys_n))))
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  num_spans = min(num_spans, num_noise, length - num_noise)
  keys = np.asarray(keys_n, np.int64)[:, None]

  def segment_lengths(num_items: int, which: int) -> np.ndarray:
    if num_spans == 1:
      return np.full((n, 1), num_items)
    scores = index_random.uniform(keys, salt, which, np.arange(num_items - 1)[None, :])
    starts = np.sort(np.argpartition(scores, num_spans - 2, axis=1)[:, :num_spans - 1], axis=1)
    bounds = np.concatenate([np.zeros((n, 1), np.int64), starts + 1,
                             np.full((n, 1), num_items)], axis=1)
    return np.diff(bounds, axis=1)

  interleaved = np.stack([segment_lengths(length - num_noise, 1),
                          segment_lengths(num_noise, 0)], axis=2).reshape(n, -1)
  # Span boundaries -> a noise mask: odd spans (counting from 0) are noise.
  starts = np.cumsum(interleaved, axis=1)[:, :-1]
  indicator = np.zeros((n, length + 1), np.int64)
  np.add.at(indicator, (np.repeat(np.arange(n), starts.shape[1]), starts.ravel()), 1)
  noise_mask = np.cumsum(indicator, axis=1)[:, :length] % 2 == 1

  def replace(mask):
    prev = np.concatenate([np.zeros((n, 1), bool), mask[:, :-1]], axis=1)
    first = mask & ~prev
    out = np.where(first, vocab_size - np.cumsum(first, axis=1), tokens_nl)
    return out[~(mask & prev)].reshape(n, -1).astype(np.int32)

  return replace(noise_mask), replace(~noise_mask)
