"""The Python API for a trained or converted model: generate text, score pairs.

    from t5jax.decode.predictor import Predictor
    model = Predictor.from_checkpoint("runs/demo")
    model.generate(["translate English to French: The cat sat on the mat."])
    model.score(["translate English to German: Hello."], ["Hallo."])

On one device by default. With a mesh (`from_checkpoint(..., mesh=...)`) the parameters are
restored straight into their shards (never whole on one device), every batch is split over
the mesh's data axes, and with several processes (jax.distributed) every process calls the
same methods with the same inputs: each computes the rows of its own devices, and all of
them get every result back.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from t5jax import checkpoint, fs
from t5jax.data import vocab
from t5jax.decode import beam_search, decoding, vocab_reduce
from t5jax.model import param_tree, t5
from t5jax.model.config import T5Config
from t5jax.parallel import partitioning


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

  def __init__(self, config: T5Config, params, vocabulary: seqio.Vocabulary,
               mesh: jax.sharding.Mesh | None = None):
    if vocabulary.vocab_size > config.vocab_size:
      raise ValueError(
          f"The vocabulary has {vocabulary.vocab_size} pieces but the model has only "
          f"{config.vocab_size} embedding rows; use the vocabulary the checkpoint was "
          "trained with (put its spiece.model in the checkpoint directory).")
    self.config = config
    self.model = t5.Transformer(config)
    self.params = params
    self.vocabulary = vocabulary
    self.mesh = mesh
    self.truncated = 0  # inputs (or targets) cut to the maximum length so far
    self._decode_weights = (None, None)  # (the params they were made from, them)

  @classmethod
  def from_checkpoint(cls, path: str, *, dtype: str = "float32", step: int | None = None,
                      mesh: jax.sharding.Mesh | None = None,
                      param_dtype: str = "float32") -> "Predictor":
    """Loads a run directory, its checkpoints/ directory, or a converted checkpoint (local
    or gs://); with `mesh`, straight into the parameters' shards on it; in `param_dtype`
    ("bfloat16" halves the memory)."""
    if not fs.isdir(path):
      raise FileNotFoundError(f"Checkpoint directory {path} does not exist.")
    meta = checkpoint.read_meta(path, step)
    config = checkpoint.model_config_from_meta(meta).replace(
        dtype=dtype, dropout_rate=0.0, param_dtype=param_dtype)
    # The vocabulary it was trained with: its metadata says which, and a SentencePiece
    # model sits beside checkpoints/, in the run or converted directory.
    vocabulary = vocab.load(fs.parent(checkpoint.checkpoints_dir(path)), meta.get("vocab"))
    model = t5.Transformer(config)
    abstract = param_tree.abstract_params(model)
    shardings = None
    if mesh is not None:
      boxed = param_tree.abstract_boxed_params(model)
      shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
    params = checkpoint.load_params(path, abstract, shardings, step=step)
    return cls(config, params, vocabulary, mesh)

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
    """Zero-padded [R, S] tokens, shaped by padded_shape (R a multiple of the mesh's
    data-parallel devices)."""
    shape = padded_shape(len(rows), max(len(r) for r in rows), batch_size, cap)
    shards = self.batch_shards
    array = np.zeros((-(-shape[0] // shards) * shards, shape[1]), np.int32)
    for i, r in enumerate(rows):
      array[i, :len(r)] = r
    return array

  def decode_tokens(self, ids) -> str:
    return text_of(self.vocabulary, ids)

  def pieces(self, ids) -> list[str]:
    """Each token id as its vocabulary writes it: SentencePiece pieces ("▁Zwei"), a byte's
    character, "</s>" for EOS."""
    sp = getattr(self.vocabulary, "tokenizer", None)  # seqio's SentencePiece processor
    out = []
    for i in (int(t) for t in ids):
      if i == decoding.EOS_ID:
        out.append("</s>")
      elif sp is not None and i < sp.get_piece_size():
        out.append(sp.id_to_piece(i))
      else:
        out.append(self.vocabulary.decode([i]))
    return out

  @property
  def batch_shards(self) -> int:
    """How many devices a batch's rows are split over (a batch's rows are a multiple)."""
    return 1 if self.mesh is None else partitioning.batch_shards(self.mesh)

  def _run(self, fn, *batch):
    """fn(*batch) for [B, ...] numpy arrays, on the host. With a mesh every process passes
    the same arrays: each feeds its devices' rows, and every process gets all rows back."""
    if self.mesh is None:
      return jax.device_get(fn(*batch))
    if batch[0].shape[0] % self.batch_shards:
      raise ValueError(f"A batch of {batch[0].shape[0]} rows does not split over the mesh's "
                       f"{self.batch_shards} data-parallel devices; use a multiple.")
    sharding = partitioning.batch_sharding(self.mesh)
    with partitioning.sharding_context(self.mesh):
      arrays = [None if a is None else
                jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index])
                for a in batch]
      out = fn(*arrays)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        return multihost_utils.process_allgather(out, tiled=True)
      return jax.device_get(out)

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
               batch_size: int = 32, task: str | None = None,
               targets_prefix: Sequence[str] | None = None) -> list[Generation]:
    """Decodes each input string; returns one Generation per input, in order.
    `task` picks the task's parameters in a model with task slots; `targets_prefix`
    (one string per input, "" for none) is text each output starts with and continues
    (its tokens are in the output, not in its score).

    Inputs run in batches of similar length (see length_batches): less padding,
    and the decode loop, which stops when its whole batch has ended, stops sooner.
    """
    return [best for best, *_ in self.generate_n(
        inputs, 1, strategy=strategy, max_input_length=max_input_length,
        max_decode_length=max_decode_length, batch_size=batch_size, task=task,
        targets_prefix=targets_prefix)]

  def generate_n(self, inputs: Sequence[str], n: int, *,
                 strategy: decoding.DecodeConfig = decoding.DecodeConfig(),
                 max_input_length: int = 512, max_decode_length: int = 64,
                 batch_size: int = 32, task: str | None = None,
                 targets_prefix: Sequence[str] | None = None) -> list[list[Generation]]:
    """Up to n Generations per input, best first: the n best beams of beam search
    (n <= num_beams; fewer where fewer beams ended), or n samples drawn independently
    (method "sample"). Arguments as generate's."""
    if n < 1:
      raise ValueError(f"n={n}: ask for at least 1 output per input.")
    if n > 1 and strategy.method == "greedy":
      raise ValueError(f"{n} outputs per input need beam search (--num_return_sequences) "
                       "or sampling (--num_samples); greedy decoding has one.")
    if strategy.method == "beam" and n > strategy.num_beams:
      raise ValueError(f"{n} outputs per input from beam search need at least as many beams; "
                       f"got num_beams={strategy.num_beams} (raise --num_beams).")
    beams = strategy.method == "beam" and n > 1
    if beams:
      strategy = dataclasses.replace(strategy, return_all_beams=True)
    copies = n if strategy.method == "sample" else 1  # each copy draws its own sample
    encoded = [row for row in self.encode(inputs, max_input_length) for _ in range(copies)]
    prefixes = None
    if targets_prefix is not None:
      prefixes = [row for row in self.encode_prefixes(targets_prefix, len(inputs),
                                                      max_decode_length)
                  for _ in range(copies)]
    found: list[list[Generation]] = [[] for _ in encoded]
    for batch in length_batches([len(r) for r in encoded], batch_size):
      tokens = self._pad([encoded[i] for i in batch], batch_size, max_input_length)
      prefix = None
      if prefixes is not None:
        prefix = np.zeros((tokens.shape[0], max_decode_length), np.int32)
        for row, i in enumerate(batch):
          prefix[row, :len(prefixes[i])] = prefixes[i]
      out = self.generate_tokens(tokens, strategy, max_decode_length, task, prefix)
      for row, i in enumerate(batch):
        if beams:
          found[i] = [self._generation(out.beams_bkl[row, k], out.beam_logprob_bk[row, k],
                                       out.beam_score_bk[row, k]) for k in range(n)
                      if out.beam_logprob_bk[row, k] > beam_search.NEG_INF / 2] or [
                          self._generation(out.tokens_bl[row], out.logprob_b[row],
                                           out.score_b[row])]
        else:
          found[i] = [self._generation(out.tokens_bl[row], out.logprob_b[row],
                                       out.score_b[row])]
    grouped = [sum(found[j * copies:(j + 1) * copies], []) for j in range(len(inputs))]
    return [sorted(g, key=lambda x: -x.score) for g in grouped]

  def _generation(self, ids, log_likelihood, score) -> Generation:
    ids = [int(t) for t in ids]
    return Generation(self.decode_tokens(ids), ids, float(log_likelihood), float(score))

  def encode_prefixes(self, texts: Sequence[str], rows: int,
                      max_decode_length: int) -> list[list[int]]:
    """Token ids (no EOS) of each output's prefix.

    Raises:
      ValueError: not one per input, or one leaves no room to decode.
    """
    if len(texts) != rows:
      raise ValueError(f"{len(texts)} targets prefixes for {rows} inputs; give one each "
                       "(\"\" for none).")
    out = []
    for n, text in enumerate(texts):
      ids = list(self.vocabulary.encode(text)) if text else []
      if len(ids) >= max_decode_length:
        raise ValueError(f"The targets prefix of input {n} ({text[:30]!r}) is {len(ids)} "
                         f"tokens, which leaves no room in max_decode_length={max_decode_length}; raise "
                         "--max_decode_length or shorten the prefix.")
      out.append(ids)
    return out

  def score(self, inputs: Sequence[str], targets: Sequence[str], *,
            max_input_length: int = 512, max_target_length: int = 512,
            batch_size: int = 32, task: str | None = None) -> list[float]:
    """Log-likelihood of each target given its input: the sum of the target
    tokens' log-probabilities, EOS included."""
    return [total for total, _, _ in self.score_with_tokens(
        inputs, targets, max_input_length=max_input_length,
        max_target_length=max_target_length, batch_size=batch_size, task=task)]

  def score_tokens(self, inputs: Sequence[str], targets: Sequence[str], *,
                   max_input_length: int = 512, max_target_length: int = 512,
                   batch_size: int = 32, task: str | None = None
                   ) -> list[tuple[list[int], list[float]]]:
    """Per target: its token ids (EOS last) and each one's log-probability given the
    input and the tokens before it (t5x's score with intermediates)."""
    return [(ids, logprobs) for _, ids, logprobs in self.score_with_tokens(
        inputs, targets, max_input_length=max_input_length,
        max_target_length=max_target_length, batch_size=batch_size, task=task)]

  def score_with_tokens(self, inputs: Sequence[str], targets: Sequence[str], *,
                        max_input_length: int = 512, max_target_length: int = 512,
                        batch_size: int = 32, task: str | None = None
                        ) -> list[tuple[float, list[int], list[float]]]:
    """Per target: (its log-likelihood, its token ids, each token's log-probability),
    all from one teacher-forced pass (what `score` and `score_tokens` each give)."""
    return [(float(total), ids, [float(x) for x in logprobs[:len(ids)]])
            for (total, logprobs), ids in self._score_rows(
                inputs, targets, self.target_scores, max_input_length, max_target_length,
                batch_size, task)]

  def _score_rows(self, inputs, targets, fn, max_input_length, max_target_length,
                  batch_size, task) -> list:
    """(fn's row, the target's token ids) per pair, in order; fn(enc [B, S], tgt [B, T],
    task) runs on batches of similar length and returns arrays whose rows are the pairs."""
    if len(inputs) != len(targets):
      raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets; give one each.")
    enc_rows = self.encode(inputs, max_input_length)
    dec_rows = self.encode(targets, max_target_length)
    out: list = [None] * len(enc_rows)
    lengths = [len(e) + len(d) for e, d in zip(enc_rows, dec_rows)]
    for batch in length_batches(lengths, batch_size):
      enc = self._pad([enc_rows[i] for i in batch], batch_size, max_input_length)
      tgt = self._pad([dec_rows[i] for i in batch], batch_size, max_target_length)
      result = fn(enc, tgt, task)
      for row, i in enumerate(batch):
        out[i] = (tuple(x[row] for x in result), dec_rows[i])
    return out

  def generate_tokens(self, encoder_input_tokens: np.ndarray,
                      strategy: decoding.DecodeConfig, max_decode_length: int,
                      task: str | None = None, prefix_bl: np.ndarray | None = None):
    """Decodes a padded [B, S] token array (each output starting with prefix_bl's row, if
    given: [B, max_decode_length], 0-padded); returns DecodeOutput on the host."""
    slots = self.task_slots(task, encoder_input_tokens.shape[0])
    weights = self.decode_weights()
    return self._run(lambda tokens, slots_b, prefix: _generate(
        self.model, weights, tokens, max_decode_length, strategy, slots_b, prefix),
                     encoder_input_tokens, slots, prefix_bl)

  def decode_weights(self):
    """self.params as decoding reads them fastest (decoding.prepare_weights: on one
    CPU device, [out, in] copies of the decoder's kernels), made on the first call
    that decodes and again only if self.params is replaced."""
    made_from, weights = self._decode_weights
    if made_from is not self.params:
      weights = decoding.prepare_weights(self.model, self.params)
      self._decode_weights = (self.params, weights)
    return weights

  def teacher_forced(self, encoder_input_tokens: np.ndarray, target_tokens: np.ndarray,
                     task: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of padded [B, S] inputs and [B, T] targets: (the targets' summed
    log-probability, their number of tokens, how many the model ranks first), EOS
    included: what a validation loss and token accuracy are made of."""
    slots = self.task_slots(task, encoder_input_tokens.shape[0])
    out = self._run(
        lambda enc, tgt, slots_b: _teacher_forced(self.model, self.params, enc, tgt, slots_b),
        encoder_input_tokens, target_tokens, slots)
    return tuple(np.asarray(x) for x in out)

  def target_scores(self, encoder_input_tokens: np.ndarray, target_tokens: np.ndarray,
                    task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced scores of padded [B, S] inputs and [B, T] targets, from one compiled
    program: (each row's log-likelihood [B], each target token's log-probability [B, T],
    0 on padding); EOS included."""
    slots = self.task_slots(task, encoder_input_tokens.shape[0])
    out = self._run(
        lambda enc, tgt, slots_b: _target_scores(self.model, self.params, enc, tgt, slots_b),
        encoder_input_tokens, target_tokens, slots)
    return tuple(np.asarray(x) for x in out)

  def log_likelihood_tokens(self, encoder_input_tokens: np.ndarray,
                            target_tokens: np.ndarray, task: str | None = None) -> np.ndarray:
    """Teacher-forced log-likelihood [B] of padded target tokens (EOS included)."""
    return self.target_scores(encoder_input_tokens, target_tokens, task)[0]

  def token_log_probs(self, encoder_input_tokens: np.ndarray, target_tokens: np.ndarray,
                      task: str | None = None) -> np.ndarray:
    """Teacher-forced log-probability [B, T] of each padded target token (0 on padding)."""
    return self.target_scores(encoder_input_tokens, target_tokens, task)[1]


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "strategy"))
def _generate(model, params, tokens, max_decode_length, strategy, task_slots_b, prefix_bl):
  return decoding.generate(model, params, tokens, max_decode_length=max_decode_length,
                           strategy=strategy, task_slots_b=task_slots_b, prefix_bl=prefix_bl)


def _forward(model, params, encoder_tokens, targets, task_slots_b):
  """Teacher-forced logits [B, T, V] and each target's log-probability [B, T]."""
  decoder_inputs = jnp.concatenate(
      [jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  slots_b1 = decoding.row_slots(task_slots_b)
  logits = model.apply({"params": params}, encoder_tokens, decoder_inputs,
                       encoder_task_slots=slots_b1, decoder_task_slots=slots_b1)
  logp = vocab_reduce.log_softmax(logits.astype(jnp.float32))
  return logits, jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("model",))
def _teacher_forced(model, params, encoder_tokens, targets, task_slots_b):
  """(sum of log p(target), target tokens, tokens the model ranks first) per row [B]."""
  logits, token_logp = _forward(model, params, encoder_tokens, targets, task_slots_b)
  real = targets > 0
  correct = (jnp.argmax(logits, axis=-1) == targets) & real
  return (jnp.sum(token_logp * real, axis=-1), jnp.sum(real, axis=-1, dtype=jnp.int32),
          jnp.sum(correct, axis=-1, dtype=jnp.int32))


@functools.partial(jax.jit, static_argnames=("model",))
def _target_scores(model, params, encoder_tokens, targets, task_slots_b):
  """(sum of log p(target token) over non-padding targets [B], each one [B, T], 0 on
  padding): one program, so a row's sum is the sum of the tokens it reports."""
  _, token_logp = _forward(model, params, encoder_tokens, targets, task_slots_b)
  token_logp = token_logp * (targets > 0)
  return jnp.sum(token_logp, axis=-1), token_logp
