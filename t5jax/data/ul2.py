"""UL2's mixture of denoisers (Tay et al. 2022, "Unifying Language Learning Paradigms"),
in numpy, one example at a time, its randomness keyed like span corruption's.

Each example is made by one denoiser, drawn by the mixture's rates:

* R (regular): T5 span corruption, mean span 3 or 8 at noise density 0.15; mode `[NLU]`;
* X (extreme): mean span 3 or 8 at density 0.5, and 64 at 0.15 and 0.5; mode `[NLG]`;
* S (sequential): prefix LM: the segment is split at a uniformly drawn point, the inputs
  are the prefix and the targets its exact continuation; mode `[S2S]`.

The inputs start with the mode token, written as plain text (`[NLU]`, `[NLG]`, `[S2S]`)
that the T5 vocabulary tokenizes and decodes back unchanged, so prompting a UL2-trained
model with it works through any text interface. Each denoiser's raw segment length is
computed, like T5's span corruption, so that its inputs (mode, kept tokens, sentinels,
EOS) fill `inputs_length` and its targets fit `targets_length`.

The number of noise spans is drawn with stochastic rounding (floor or ceiling of
noise / mean_span, the ceiling with probability of the fraction), so that a denoiser's
mean span is its setting on average: T5's rounding would give a 64-token-mean denoiser
over 89 noise tokens one span of 89, every time.

Stream layout (the batch pipeline, `example_ops`): the stored documents are one token
stream cut into windows of the longest denoiser's segment; example e reads window e,
its denoiser's segment at a keyed offset within it. An epoch has ceil(tokens / window)
examples whatever the draws, so position k of the stream is O(1), as for span corruption.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from t5jax.data import index_random, noise

MODES = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
# (kind, mean noise span, noise density) of the paper's seven denoisers; S has neither.
DEFAULT_DENOISERS = (("R", 3.0, 0.15), ("R", 8.0, 0.15), ("X", 3.0, 0.5), ("X", 8.0, 0.5),
                     ("X", 64.0, 0.15), ("X", 64.0, 0.5), ("S", 0.0, 0.0))
# Uniform over the seven: the paper gives no other rates, and its appendix's reference
# implementation (`ul2_objective`, rates=None) samples its denoisers uniformly.
DEFAULT_RATES = (1.0,) * len(DEFAULT_DENOISERS)
# UL2R (Tay et al. 2022b, "Transcending Scaling Laws with 0.1% Extra Compute"): continued
# pretraining of a span-corruption model, half prefix LM; the settings of Levanter's ul2r.
UL2R_DENOISERS = (("R", 3.0, 0.15), ("X", 32.0, 0.15), ("X", 3.0, 0.5), ("S", 0.0, 0.0))
UL2R_RATES = (1.0, 1.0, 1.0, 3.0)
# Keeps the denoiser's keyed draws apart from each other and from the task's others.
_CHOICE, _OFFSET, _SPLIT, _SPANS, _NOISE = 0x0C, 0x0F, 0x5B, 0x5A, 0x1E


@dataclasses.dataclass(frozen=True)
class Denoiser:
  kind: str
  mean_span: float
  density: float
  segment: int      # raw tokens it turns into one example
  mode_ids: tuple   # its mode token's ids

  @property
  def label(self) -> str:
    if self.kind == "S":
      return "S (prefix LM)"
    return f"{self.kind}(mean span {self.mean_span:g}, density {self.density:g})"


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The denoisers at one pair of lengths, their normalized rates, and the stream window
  every example reads (the longest denoiser's segment)."""
  denoisers: tuple[Denoiser, ...]
  rates: np.ndarray
  window: int

  @classmethod
  def of(cls, denoisers: Sequence[Denoiser], rates) -> "Mixture":
    rates = np.asarray(rates, np.float64)
    return cls(tuple(denoisers), rates / rates.sum(), max(d.segment for d in denoisers))


def _check(denoisers: Sequence, rates: Sequence[float]) -> None:
  if len(denoisers) != len(rates) or not denoisers:
    raise ValueError(f"UL2 needs one rate per denoiser: {len(denoisers)} denoisers, "
                     f"{len(rates)} rates.")
  if any(r < 0 for r in rates) or not sum(rates) > 0:
    raise ValueError(f"UL2 rates {list(rates)} must be >= 0 and sum to a positive number.")
  for kind, span, density in denoisers:
    if kind not in MODES:
      raise ValueError(f"UL2 denoiser kind {kind!r} is not one of R, X, S.")
    if kind != "S" and not 0 < density < 1:
      raise ValueError(f"UL2 denoiser {kind}(mean span {span:g}, density {density:g}): the "
                       "noise density must be in (0, 1).")
    if kind != "S" and span < 1:
      raise ValueError(f"UL2 denoiser {kind}(mean span {span:g}, density {density:g}): the "
                       "mean span must be >= 1.")


def _span_lengths(length: int, density: float, mean_span: float) -> tuple[int, int, int]:
  """(noise tokens, most spans, inputs tokens without mode and EOS) of a raw segment."""
  num_noise = min(max(int(round(length * density)), 1), length - 1)
  most_spans = max(1, min(math.ceil(num_noise / mean_span), length - num_noise))
  return num_noise, most_spans, length - num_noise + most_spans


def span_segment(inputs_length: int, targets_length: int, density: float, mean_span: float,
                 mode_length: int, label: str, max_spans: int) -> int:
  """The longest raw segment whose corruption (mode, kept tokens and a sentinel per span,
  EOS) fits `inputs_length`, whose targets (a sentinel per span, noise, EOS) fit
  `targets_length`, with room for mean-length spans and at most `max_spans` spans (the
  vocabulary's sentinels: T5 has 100, so X(mean span 3, density 0.5) stops at 600 raw
  tokens, short of filling 512 inputs, rather than reuse a sentinel).

  Raises:
    ValueError: (one line, naming the denoiser) when no segment gives a span of its mean.
  """
  length = 2
  best = None
  while True:
    num_noise, spans, kept = _span_lengths(length, density, mean_span)
    if kept + mode_length + 1 > inputs_length:
      break
    if spans > max_spans:
      break
    if num_noise + spans + 1 <= targets_length and num_noise >= mean_span:
      best = length
    length += 1
  if best is None:
    raise ValueError(
        f"UL2 denoiser {label} cannot fit inputs_length={inputs_length} / targets_length="
        f"{targets_length}: a span of mean {mean_span:g} at density {density:g} needs at least "
        f"{math.ceil(mean_span / density)} raw tokens; raise the lengths or drop the denoiser.")
  return best


def mixture(vocab, inputs_length: int, targets_length: int,
              specs: Sequence = DEFAULT_DENOISERS,
              rates: Sequence[float] = DEFAULT_RATES) -> Mixture:
  """The denoisers at these lengths, with their normalized rates.

  Raises:
    ValueError: a bad setting, in one line naming the denoiser.
  """
  specs = [tuple(s) for s in specs]
  _check(specs, rates)
  out = []
  for kind, span, density in specs:
    mode_ids = tuple(int(i) for i in vocab.encode(MODES[kind]))
    m = len(mode_ids)
    if kind == "S":
      prefix_room, continuation_room = inputs_length - 1 - m, targets_length - 1
      if prefix_room < 1 or continuation_room < 1:
        raise ValueError(f"UL2 denoiser S (prefix LM) needs inputs_length > {m + 1} and "
                         f"targets_length > 1; got {inputs_length} / {targets_length}.")
      segment = max(prefix_room, continuation_room)
    else:
      label = f"{kind}(mean span {span:g}, density {density:g})"
      segment = span_segment(inputs_length, targets_length, density, span, m, label,
                             max_spans=int(vocab.extra_ids) or noise.MAX_SENTINELS)
    out.append(Denoiser(kind, float(span), float(density), segment, mode_ids))
  return Mixture.of(out, rates)


def choose(keys: np.ndarray, rates: np.ndarray) -> np.ndarray:
  """Each example's denoiser index, keyed."""
  u = index_random.uniform(np.asarray(keys, np.int64), _CHOICE)
  return np.minimum(np.searchsorted(np.cumsum(rates), u, side="right"), len(rates) - 1)


def offset(key: int, window: int, segment: int) -> int:
  """Where in its window an example's segment starts (keyed, so epochs differ)."""
  return int(index_random.uniform(int(key), _OFFSET) * (window - segment + 1))


def make_example(tokens: np.ndarray, key: int, d: Denoiser, vocab_size: int,
                 lengths: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """One example of denoiser `d` from its raw segment: (inputs, targets) without EOS,
  the inputs starting with the mode token. lengths: (inputs_length, targets_length)."""
  tokens = np.asarray(tokens, np.int32)
  mode = np.asarray(d.mode_ids, np.int32)
  if d.kind == "S":
    # The split point, uniform over those that leave the prefix (after the mode token)
    # and its continuation (each with EOS) within their lengths.
    n = len(tokens)
    prefix_room = lengths[0] - 1 - len(mode)
    low, high = max(1, n - (lengths[1] - 1)), max(1, min(prefix_room, n - 1))
    split = low + int(index_random.uniform(int(key), _SPLIT) * (high - low + 1)) if n > 1 else n
    return np.concatenate([mode, tokens[:split]]), tokens[split:]
  mask = noise.noise_mask(len(tokens), (int(key), _NOISE), d.density, d.mean_span,
                          span_count_keys=(int(key), _SPANS))
  return (np.concatenate([mode, noise.replace_spans(tokens, mask, vocab_size)]),
          noise.replace_spans(tokens, ~mask, vocab_size))


def ul2_example(window: np.ndarray, key: int, mixture: Mixture, vocab_size: int,
                lengths: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
  """(inputs, targets, denoiser index) of the example made from one stream window (the
  stream's last may be shorter than mixture.window)."""
  i = int(choose(np.asarray([key]), mixture.rates)[0])
  d = mixture.denoisers[i]
  start = min(offset(key, mixture.window, d.segment), max(0, len(window) - d.segment))
  inputs, targets = make_example(window[start:start + d.segment], key, d, vocab_size,
                                 lengths)
  return inputs, targets, i
