"""The Python API for a trained or converted model: generate text, score pairs.

    from t5jax.decode.predictor import Predictor
    model = Predictor.from_checkpoint("runs/demo")
    model.generate(["translate English to French: The cat sat on the mat."])
    model.score(["translate English to German: Hello."], ["Hallo."])
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from t5jax import checkpoint, fs
from t5jax.data import vocab
from t5jax.decode import decoding, vocab_reduce
from t5jax.model import param_tree, t5
from t5jax.model.config import T5Config


@dataclasses.dataclass(frozen=True)
class Generation:
  """One decoded output: the text, its tokens, its log-likelihood and rank score."""
  text: str
  tokens: list[int]
  log_likelihood: float
  score: float


def text_of(vocabulary: seqio.Vocabulary, ids) -> str:
  """The text of a token row: up to EOS, padding dropped."""
  ids = [int(t) for t in ids]
  if decoding.EOS_ID in ids:
    ids = ids[:ids.index(decoding.EOS_ID)]
  return vocabulary.decode([t for t in ids if t != 0])


def _bucket(n: int, cap: int, least: int = 8) -> int:
  """Pads sizes to powers of two (at least `least`, at most `cap`) so few shapes get
  compiled."""
  return min(cap, max(least, 1 << (max(n, 1) - 1).bit_length()))


def padded_shape(rows: int, longest: int, batch_size: int, cap: int) -> tuple[int, int]:
  """The [rows, length] a batch is padded to: both rounded up to powers of two,
  rows at most batch_size and length at most cap, so a file compiles a handful of
  shapes."""
  return _bucket(rows, batch_size, least=1), _bucket(longest, cap)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
  """Indices in batches of similar length: sorted by length, then cut every
  batch_size, so that a batch pads little and shapes repeat (callers restore the
  original order)."""
  order = sorted(range(len(lengths)), key=lengths.__getitem__)
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class Predictor:
  """A model, its parameters and its vocabulary, ready to generate and score."""

  def __init__(self, config: T5Config, params, vocabulary: seqio.Vocabulary):
    if vocabulary.vocab_size > config.vocab_size:
      raise ValueError(
          f"The vocabulary has {vocabulary.vocab_size} pieces but the model has only "
          f"{config.vocab_size} embedding rows; use the vocabulary the checkpoint was "
          "trained with (put its spiece.model in the checkpoint directory).")
    self.config = config
    self.model = t5.Transformer(config)
    self.params = params
    self.vocabulary = vocabulary
    self.truncated = 0  # inputs (or targets) cut to the maximum length so far
    self._decode_weights = (None, None)  # (the params they were made from, them)

  @classmethod
  def from_checkpoint(cls, path: str, *, dtype: str = "float32",
                      step: int | None = None) -> "Predictor":
    """Loads a run directory, its checkpoints/ directory, or a converted checkpoint."""
    if not fs.isdir(path):
      raise FileNotFoundError(f"Checkpoint directory {path} does not exist.")
    meta = checkpoint.read_meta(path, step)
    config = checkpoint.model_config_from_meta(meta).replace(dtype=dtype, dropout_rate=0.0)
    # The vocabulary it was trained with: its metadata says which, and a SentencePiece
    # model sits beside checkpoints/, in the run or converted directory.
    vocabulary = vocab.load(fs.parent(checkpoint.checkpoints_dir(path)), meta.get("vocab"))
    model = t5.Transformer(config)
    abstract = param_tree.abstract_params(model)
    params = checkpoint.load_params(path, abstract, step=step)
    return cls(config, params, vocabulary)

  # Tokenization ------------------------------------------------------------

  def encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids with EOS, cut to max_length (counted in self.truncated)."""
    out = []
    for text in texts:
      ids = list(self.vocabulary.encode(text))
      if len(ids) > max_length - 1:
        self.truncated += 1
      out.append(ids[:max_length - 1] + [decoding.EOS_ID])
    return out

  def _pad(self, rows: list[list[int]], batch_size: int, cap: int) -> np.ndarray:
    """Zero-padded [R, S] tokens, shaped by padded_shape."""
    array = np.zeros(padded_shape(len(rows), max(len(r) for r in rows), batch_size, cap),
                     np.int32)
    for i, r in enumerate(rows):
      array[i, :len(r)] = r
    return array

  def decode_tokens(self, ids) -> str:
    return text_of(self.vocabulary, ids)

  def task_slots(self, task: str | None, rows: int):
    """[rows] slot indices of `task` for a model with task slots (None otherwise).

    Raises:
      ValueError: the model has per-task parameters and no task (or an unknown
        one) was given.
    """
    if not self.config.has_task_parameters:
      return None
    if task is None:
      raise ValueError(
          f"This model has per-task parameters (task_slots {list(self.config.task_slots)}); "
          "say which task's to use (task=... in Python, --task on the command line).")
    return np.full((rows,), self.config.slot_of_task(task), np.int32)

  # Generation and scoring --------------------------------------------------

  def generate(self, inputs: Sequence[str], *,
               strategy: decoding.DecodeConfig = decoding.DecodeConfig(),
               max_input_length: int = 512, max_decode_length: int = 64,
               batch_size: int = 32, task: str | None = None) -> list[Generation]:
    """Decodes each input string; returns one Generation per input, in order.
    `task` picks the task's parameters in a model with task slots.

    Inputs run in batches of similar length (see length_batches): less padding,
    and the decode loop, which stops when its whole batch has ended, stops sooner.
    """
    encoded = self.encode(inputs, max_input_length)
    results: list[Generation | None] = [None] * len(encoded)
    for batch in length_batches([len(r) for r in encoded], batch_size):
      tokens = self._pad([encoded[i] for i in batch], batch_size, max_input_length)
      out = self.generate_tokens(tokens, strategy, max_decode_length, task)
      for row, i in enumerate(batch):
        ids = [int(t) for t in out.tokens_bl[row]]
        results[i] = Generation(self.decode_tokens(ids), ids, float(out.logprob_b[row]),
                                float(out.score_b[row]))
    return results

  def score(self, inputs: Sequence[str], targets: Sequence[str], *,
            max_input_length: int = 512, max_target_length: int = 512,
            batch_size: int = 32, task: str | None = None) -> list[float]:
    """Log-likelihood of each target given its input: the sum of the target
    tokens' log-probabilities, EOS included."""
    if len(inputs) != len(targets):
      raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets; give one each.")
    enc_rows = self.encode(inputs, max_input_length)
    dec_rows = self.encode(targets, max_target_length)
    scores = [0.0] * len(enc_rows)
    lengths = [len(e) + len(d) for e, d in zip(enc_rows, dec_rows)]
    for batch in length_batches(lengths, batch_size):
      enc = self._pad([enc_rows[i] for i in batch], batch_size, max_input_length)
      tgt = self._pad([dec_rows[i] for i in batch], batch_size, max_target_length)
      loglik = self.log_likelihood_tokens(enc, tgt, task)
      for row, i in enumerate(batch):
        scores[i] = float(loglik[row])
    return scores


  def generate_tokens(self, encoder_input_tokens: np.ndarray,
                      strategy: decoding.DecodeConfig, max_decode_length: int,
                      task: str | None = None):
    """Decodes a padded [B, S] token array; returns DecodeOutput on the host."""
    slots = self.task_slots(task, encoder_input_tokens.shape[0])
    return jax.device_get(_generate(self.model, self.decode_weights(), encoder_input_tokens,
                                    max_decode_length, strategy, slots))

  def decode_weights(self):
    """self.params as decoding reads them fastest (decoding.prepare_weights: on one
    CPU device, [out, in] copies of the decoder's kernels), made on the first call
    that decodes and again only if self.params is replaced."""
    made_from, weights = self._decode_weights
    if made_from is not self.params:
      weights = decoding.prepare_weights(self.model, self.params)
      self._decode_weights = (self.params, weights)
    return weights

  def log_likelihood_tokens(self, encoder_input_tokens: np.ndarray,
                            target_tokens: np.ndarray, task: str | None = None) -> np.ndarray:
    """Teacher-forced log-likelihood [B] of padded target tokens (EOS included)."""
    slots = self.task_slots(task, encoder_input_tokens.shape[0])
    return np.asarray(jax.device_get(
        _log_likelihood(self.model, self.params, encoder_input_tokens, target_tokens, slots)))


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "strategy"))
def _generate(model, params, tokens, max_decode_length, strategy, task_slots_b):
  return decoding.generate(model, params, tokens, max_decode_length=max_decode_length,
                           strategy=strategy, task_slots_b=task_slots_b)


@functools.partial(jax.jit, static_argnames=("model",))
def _log_likelihood(model, params, encoder_tokens, targets, task_slots_b):
  """Teacher-forced sum of log p(target token) over non-padding targets [B]."""
  decoder_inputs = jnp.concatenate(
      [jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  slots_b1 = decoding.row_slots(task_slots_b)
  logits = model.apply({"params": params}, encoder_tokens, decoder_inputs,
                       encoder_task_slots=slots_b1, decoder_task_slots=slots_b1)
  logp = vocab_reduce.log_softmax(logits.astype(jnp.float32))
  token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token_logp * (targets > 0), axis=-1)
