"""A task's per-example steps (after SeqIO's cache point), in numpy, by example index.

The batch pipeline needs example `k` of a task's endless stream without replaying the stream,
so the steps that SeqIO runs after `CacheDatasetPlaceholder` run here on one stored example,
with their randomness keyed by (seed, task, k) (`index_random`). The steps t5jax knows:

* `t5jax.data.span_corruption.span_corruption` (first): the stored documents are read as one
  concatenated token stream cut into segments that corrupt to `inputs_length` tokens (T5's
  concatenate-then-split), and each segment is corrupted with noise keyed by k, so every epoch
  corrupts it anew;
* `t5jax.data.span_corruption.ul2` (first): the same stream cut into windows of the
  longest denoiser's segment; example k's denoiser, its segment's offset in the window
  and its noise are keyed by k (`t5jax.data.ul2`);
* `seqio.preprocessors.append_eos_after_trim` and `append_eos`.

`t5jax.data.task_recipe.recipe` refuses, in one line, a task with another step after its cache
point. `TaskRecipe` is plain data (JSON), so worker processes rebuild a `TaskView` with numpy
alone (no SeqIO, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from t5jax import store
from t5jax.data import index_random
from t5jax.data import noise
from t5jax.data import ul2

SPAN_CORRUPTION = "span_corruption"
UL2 = "ul2"
EOS_AFTER_TRIM = "append_eos_after_trim"
EOS = "append_eos"
# Keeps the noise keys apart from the other keyed choices of a task.
_NOISE_SALT = 0x5EED


@dataclasses.dataclass(frozen=True)
class TaskRecipe:
  """Everything a worker needs to produce a task's examples by index.

  Attributes:
    name: the task's name (for messages).
    store: location of its `ExampleStore` (a local directory or a gs:// URL).
    ops: the per-example steps, [(op name, kwargs)].
    lengths: {"inputs": n, "targets": m} of the batch.
    eos: {feature: EOS id} for the features that get EOS.
    vocab_size: the targets vocabulary's size (sentinels count down from its top).
  """
  name: str
  store: str
  ops: tuple
  lengths: dict
  eos: dict
  vocab_size: int

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "TaskRecipe":
    d = json.loads(text)
    d["ops"] = tuple((name, kwargs) for name, kwargs in d["ops"])
    return cls(**d)


def span_args(kwargs: dict) -> dict:
  return {k: kwargs[k] for k in ("noise_density", "mean_noise_span_length") if k in kwargs}


class TaskView:
  """A task's examples by index: `num_examples` per epoch, `examples(ids, keys)`."""

  def __init__(self, r: TaskRecipe):
    self.recipe = r
    self._store = store.ExampleStore.open(r.store)
    ops = list(r.ops)
    self._span = self._ul2 = None
    if ops and ops[0][0] == UL2:
      kwargs = ops.pop(0)[1]
      self._ul2 = ul2.Mixture.of(
          [ul2.Denoiser(kind, span, density, segment, tuple(mode))
           for kind, span, density, segment, mode in kwargs["resolved"]],
          kwargs["resolved_rates"])
      self._segment = self._ul2.window
      self._num_tokens = self._store.num_tokens("targets")
      self.num_examples = -(-self._num_tokens // self._segment)
    elif ops and ops[0][0] == SPAN_CORRUPTION:
      self._span = span_args(ops.pop(0)[1])
      self._segment, _ = noise.span_corruption_lengths(
          r.lengths["inputs"], **self._span)
      self._num_tokens = self._store.num_tokens("targets")
      self.num_examples = -(-self._num_tokens // self._segment)
    else:
      self.num_examples = self._store.num_examples
    self._eos_ops = [name for name, _ in ops]

  def examples(self, ids: np.ndarray, keys: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(inputs, targets)] of stored examples `ids`, trimmed to the lengths; `keys[i]`
    seeds example i's noise."""
    if self._ul2 is not None:
      ids = np.asarray(ids, np.int64)
      windows = self._store.stream("targets", ids * self._segment, (ids + 1) * self._segment)
      lengths = (self.recipe.lengths["inputs"], self.recipe.lengths["targets"])
      pairs = [ul2.ul2_example(w, int(k), self._ul2, self.recipe.vocab_size, lengths)[:2]
               for w, k in zip(windows, keys)]
    elif self._span is None:
      pairs = list(zip(self._store.examples("inputs", ids), self._store.examples("targets", ids)))
    else:
      # One read per batch of every example's segment of the concatenated stream.
      ids = np.asarray(ids, np.int64)
      segments = self._store.stream("targets", ids * self._segment, (ids + 1) * self._segment)
      pairs = [None] * len(ids)
      # Every segment but the split's last has the full length: corrupt those together.
      full = np.nonzero((ids + 1) * self._segment <= self._num_tokens)[0]
      if len(full):
        inputs, targets = noise.corrupt_batch(np.stack([segments[i] for i in full]), keys[full],
                                              _NOISE_SALT, self.recipe.vocab_size, **self._span)
        for j, i in enumerate(full):
          pairs[i] = (inputs[j], targets[j])
      for i in np.nonzero((ids + 1) * self._segment > self._num_tokens)[0]:
        pairs[i] = noise.corrupt(segments[i], (keys[i], _NOISE_SALT), self.recipe.vocab_size,
                                 **self._span)
    return [self._finish(inputs, targets) for inputs, targets in pairs]

  def _finish(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for feature, tokens in (("inputs", inputs), ("targets", targets)):
      length = self.recipe.lengths[feature]
      eos = self.recipe.eos.get(feature)
      for op in self._eos_ops:
        if eos is None:
          continue
        if op == EOS_AFTER_TRIM:
          tokens = np.concatenate([tokens[:length - 1], [eos]])
        elif op == EOS:
          tokens = np.concatenate([tokens, [eos]])
      out.append(np.asarray(tokens[:length], np.int32))
    return out[0], out[1]


def example_ids(k: np.ndarray, num_examples: int, shuffle: bool, *keys) -> np.ndarray:
  """Which stored example position k of the endless stream is: epoch k // n, in a fresh
  keyed permutation each epoch (or file order without shuffling)."""
  k = np.asarray(k, np.int64)
  within = k % num_examples
  if not shuffle:
    return within
  out = np.empty_like(within)
  epochs = k // num_examples
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = index_random.permute(within[sel], num_examples, *keys, int(epoch))
  return out
