"""Autoregressive decoding over a preallocated KV cache: greedy, sampling, beam search.

The encoder runs once per input; the cross-attention keys and values are
projected once, when the cache is created; each step feeds one token. Every
decoder is one jitted `lax.while_loop` that stops when all rows have emitted EOS
(or at max_decode_length), so the functions also run sharded: call them under
`partitioning.sharding_context(mesh)` and the model's logical constraints apply.

`generate` is the entry point; a `DecodeConfig` picks the strategy.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from t5jax.decode import beam_search, vocab_reduce
from t5jax.decode.logits_processors import RepetitionGuard
from t5jax.model import devices, layers

PAD_ID = 0  # T5 starts decoding from the pad id
EOS_ID = 1
DECODE_METHODS = ("greedy", "sample", "beam")
# Cache leaves without a leading batch dimension (t5.Decoder's position and length).
_UNBATCHED_CACHE_LEAVES = ("index", "max_length_marker")
_CROSS_CACHE_LEAVES = ("cross_key", "cross_value")  # layers.Attention's, fixed per input


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How `generate` decodes.

  Attributes:
    method: "greedy", "sample" (temperature, top-k, top-p) or "beam".
    temperature: sampling temperature; 0 means greedy.
    top_k: sample among the top_k most likely tokens only; 0 means all tokens.
    top_p: sample from the smallest set of most likely tokens whose probability
      reaches top_p (nucleus sampling); 1.0 means all tokens.
    num_beams: beam width.
    alpha: T5's length penalty: beams rank by log p / ((5 + length) / 6) ** alpha
      (t5x's brevity_penalty; 0 ranks by log-likelihood, T5 used 0.6).
    seed: PRNG seed for sampling (generate's `rng` argument overrides it).
    return_all_beams: also return every beam with its scores (beam only).
    no_repeat_ngram_size: n > 0 never repeats an n-gram of the output (HF's
      option of that name); 0 is off.
    repetition_penalty: p > 1 scales down the scores of tokens already output
      (HF's option of that name); 1.0 is off. See logits_processors.py.
  """

  method: str = "greedy"
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  alpha: float = 0.6
  seed: int = 0
  return_all_beams: bool = False
  no_repeat_ngram_size: int = 0
  repetition_penalty: float = 1.0

  def __post_init__(self):
    RepetitionGuard(self.no_repeat_ngram_size, self.repetition_penalty)  # one-line errors
    if self.method not in DECODE_METHODS:
      raise ValueError(f"method={self.method!r} is not one of {DECODE_METHODS}.")
    if not self.temperature >= 0.0:
      raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}.")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 means no top-k cut), got {self.top_k}.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1 means no nucleus cut), got {self.top_p}.")
    if self.num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {self.num_beams}.")
    if self.return_all_beams and self.method != "beam":
      raise ValueError(f"return_all_beams=True needs method='beam', got method={self.method!r}.")

  @property
  def guard(self) -> RepetitionGuard | None:
    """The repetition options as one decode step hook; None when both are off."""
    guard = RepetitionGuard(self.no_repeat_ngram_size, self.repetition_penalty)
    return guard if guard.active else None


class DecodeOutput(NamedTuple):
  """What `generate` returns.

  tokens_bl: [B, L] decoded tokens, padding (0) after EOS.
  logprob_b: [B] log-likelihood of tokens_bl under the model (EOS included), from
    the unmodified logits whatever the temperature or top-k / top-p cut.
  score_b: [B] what the strategy ranks by: logprob_b / brevity_penalty for beam
    search, logprob_b otherwise.
  beams_bkl, beam_logprob_bk, beam_score_bk: every beam, best first (beam search
    with return_all_beams only). A slot scored beam_search.NEG_INF is empty:
    fewer than K beams reached EOS.
  """

  tokens_bl: jax.Array
  logprob_b: jax.Array
  score_b: jax.Array
  beams_bkl: jax.Array | None = None
  beam_logprob_bk: jax.Array | None = None
  beam_score_bk: jax.Array | None = None


class DecodeWeights(NamedTuple):
  """A model's parameters plus copies in the layouts its decode steps read fastest
  (the "decode_layouts" collection), made once by prepare_weights. Every function
  here takes one in place of the parameters."""
  params: object
  layouts: dict


# The decoder's kernels a decode step multiplies by: name -> (number of input axes,
# of all axes), without a scanned "layers" axis. Cross-attention keys and values are
# projected once per input, when the cache is made, and get no copy.
_KERNEL_AXES = {"query": (1, 3), "key": (1, 3), "value": (1, 3), "out": (2, 3),
                "wi": (1, 2), "wi_0": (1, 2), "wi_1": (1, 2), "wo": (1, 2),
                "logits_dense": (1, 2)}


def prepare_weights(model, params):
  """params plus, where decoding runs on one CPU device, an [out, in] copy of each
  decoder kernel a decode step multiplies by (a DecodeWeights); the matmuls that
  layers.reads_out_in picks (2-32 rows, a result of at most 2^21 entries) then read
  the copies (layers.out_in_matmul), with the same tokens. Elsewhere,
  params as they are. Models with per-task parameters get a copy of the output
  kernel only.

  The copies cost a transpose of the decoder's kernels (t5_1_1_small: 154 MB) and
  that much memory, so make them once per set of weights (as inference.Predictor
  does), not per call.
  """
  if isinstance(params, DecodeWeights) or not devices.on_one_cpu_device():
    return params
  decoder = params["decoder"]
  if model.config.has_task_parameters:
    decoder = {k: v for k, v in decoder.items() if k == "logits_dense"}
  layouts = jax.jit(_out_in_copies)(decoder)
  return DecodeWeights(params, {"decoder": layouts}) if layouts else params


def _out_in_copies(tree, path=()) -> dict:
  """The [out, in] copies of the kernels in a (sub)tree of decoder parameters."""
  copies = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      sub = _out_in_copies(value, path + (name,))
      if sub:
        copies[name] = sub
    elif name in _KERNEL_AXES and not (
        "encoder_decoder_attention" in path and name in ("key", "value")):
      num_in, num_axes = _KERNEL_AXES[name]
      lead = value.shape[:value.ndim - num_axes]  # a scanned "layers" axis, if any
      kernel = value.shape[len(lead):]
      matrix = value.reshape(lead + (int(np.prod(kernel[:num_in])), -1))
      copies[name] = jnp.swapaxes(matrix, -1, -2)
  return copies


def _variables(weights) -> dict:
  """model.apply's variables for parameters or DecodeWeights."""
  if isinstance(weights, DecodeWeights):
    return {"params": weights.params, "decode_layouts": weights.layouts}
  return {"params": weights}


def row_slots(task_slots_b):
  """[B] task slots as the model's [B, 1] per-token slots (None stays None)."""
  return None if task_slots_b is None else jnp.asarray(task_slots_b, jnp.int32)[:, None]


def encode(model, params, encoder_input_tokens, task_slots_b=None):
  """The encoder output [B, S, D]; task_slots_b [B] for models with task slots."""
  return model.apply(_variables(params), encoder_input_tokens, method=model.encode,
                     encoder_task_slots=row_slots(task_slots_b))


def init_cache(model, params, encoded_bsd, encoder_input_tokens, max_decode_length: int,
               task_slots_b=None):
  """Creates the decode cache (self-attention K/V zeros, cross-attention K/V, and
  each row's task slot for models with task slots)."""
  b = encoder_input_tokens.shape[0]
  dummy_bt = jnp.zeros((b, max_decode_length), jnp.int32)
  _, variables = model.apply(_variables(params), encoded_bsd, encoder_input_tokens, dummy_bt,
                             decode=True, method=model.decode, mutable=["cache"],
                             decoder_task_slots=row_slots(task_slots_b))
  return variables["cache"]


def decode_step(model, params, cache, encoded_bsd, encoder_input_tokens, token_b):
  """Logits [B, V] for the next position, and the updated cache."""
  logits_b1v, variables = model.apply(
      {**_variables(params), "cache": cache}, encoded_bsd, encoder_input_tokens,
      token_b[:, None], decode=True, method=model.decode, mutable=["cache"])
  return logits_b1v[:, 0], variables["cache"]


def map_cache_rows(fn, cache, skip=()):
  """Applies fn(x, axis) to every cache array that has a batch axis, except those
  named in skip. The batch axis is 0, or 1 under a scanned layer stack (its arrays
  lead with the "layers" axis)."""
  def apply(path, x):
    if path[-1].key in _UNBATCHED_CACHE_LEAVES + tuple(skip):
      return x
    return fn(x, 1 if any(getattr(k, "key", None) == "layers" for k in path) else 0)
  return jax.tree_util.tree_map_with_path(apply, cache)


def _decode_loop(model, params, encoder_input_tokens, max_decode_length: int, choose, key,
                 task_slots_b=None, guard=None, prefix_bl=None):
  """One token per row per step, chosen by choose(logits [B, V], key) -> [B];
  step i gets fold_in(key, i) (None when key is None); guard(logits, tokens, i)
  edits the logits that choose sees, not the returned log-likelihood. Where
  prefix_bl[:, i] is not 0 that token is output instead (a forced decoder prefix,
  not counted in the log-likelihood).

  Returns (tokens [B, L] with padding after EOS, log-likelihood [B] including EOS).
  """
  b = encoder_input_tokens.shape[0]
  encoded = encode(model, params, encoder_input_tokens, task_slots_b)
  cache = init_cache(model, params, encoded, encoder_input_tokens, max_decode_length,
                     task_slots_b)

  def cond(carry):
    i, _, _, _, done_b, _ = carry
    return (i < max_decode_length) & ~jnp.all(done_b)

  def body(carry):
    i, cache, prev_b, out_bl, done_b, logprob_b = carry
    logits_bv, cache = decode_step(model, params, cache, encoded, encoder_input_tokens, prev_b)
    step_key = None if key is None else jax.random.fold_in(key, i)
    guarded_bv = logits_bv if guard is None else guard(logits_bv, out_bl, i, PAD_ID)
    next_b = choose(guarded_bv, step_key).astype(jnp.int32)
    # log p = logit - logsumexp: one pass over the vocabulary fewer than log_softmax.
    token_logprob_b = (jnp.take_along_axis(logits_bv, next_b[:, None], 1)[:, 0]
                       - jax.nn.logsumexp(logits_bv, axis=-1))
    if prefix_bl is not None:
      forced_b = jax.lax.dynamic_index_in_dim(prefix_bl, i, axis=1, keepdims=False)
      next_b = jnp.where(forced_b > 0, forced_b, next_b)
      token_logprob_b = jnp.where(forced_b > 0, 0.0, token_logprob_b)
    logprob_b = logprob_b + jnp.where(done_b, 0.0, token_logprob_b)
    next_b = jnp.where(done_b, PAD_ID, next_b)
    out_bl = jax.lax.dynamic_update_slice(out_bl, next_b[:, None], (0, i))
    return i + 1, cache, next_b, out_bl, done_b | (next_b == EOS_ID), logprob_b

  carry = (jnp.zeros((), jnp.int32), cache, jnp.full((b,), PAD_ID, jnp.int32),
           jnp.zeros((b, max_decode_length), jnp.int32), jnp.zeros((b,), bool),
           jnp.zeros((b,), jnp.float32))
  _, _, _, out_bl, _, logprob_b = jax.lax.while_loop(cond, body, carry)
  return out_bl, logprob_b


def _argmax(logits_bv, key):
  del key
  return vocab_reduce.argmax(logits_bv)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "guard"))
def greedy_decode(model, params, encoder_input_tokens, max_decode_length: int,
                  task_slots_b=None, guard: RepetitionGuard | None = None, prefix_bl=None):
  """Greedy decoding with the KV cache (task_slots_b: [B] slots, for models with
  task slots; prefix_bl: [B, L] tokens each output starts with, 0-padded; likewise
  below).

  Returns:
    (tokens [B, max_decode_length] with padding after EOS, log-probability [B] of
    the decoded sequence including EOS).
  """
  return _decode_loop(model, params, encoder_input_tokens, max_decode_length, _argmax, None,
                      task_slots_b, guard, prefix_bl)


def sample_logits(logits_bv, key, temperature: float, top_k: int, top_p: float):
  """Draws one token per row from softmax(logits / temperature), cut to the top_k
  tokens, then to the nucleus of probability top_p (Hugging Face's order).

  Args:
    logits_bv: [B, V] float logits.
    key: PRNG key.
    temperature: > 0 (callers route 0 to argmax).
    top_k: 0 for no cut, else the number of tokens kept.
    top_p: 1.0 for no cut, else the nucleus mass in (0, 1).
  Returns:
    [B] int32 token ids.
  """
  logits_bv = logits_bv.astype(jnp.float32) / temperature
  v = logits_bv.shape[-1]
  if top_k == 0 and top_p >= 1.0:
    return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)
  # Sorted best first; a full sort only when top-p is used without top-k.
  sorted_bk, ids_bk = jax.lax.top_k(logits_bv, min(top_k, v) if top_k else v)
  if top_p < 1.0:
    probs_bk = jax.nn.softmax(sorted_bk, axis=-1)
    # Keep a token while the mass of the tokens before it is below top_p: the most
    # likely token always stays.
    mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    sorted_bk = jnp.where(mass_before_bk < top_p, sorted_bk, -jnp.inf)
  choice_b = jax.random.categorical(key, sorted_bk, axis=-1)
  return jnp.take_along_axis(ids_bk, choice_b[:, None], axis=1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "temperature",
                                             "top_k", "top_p", "guard"))
def sample_decode(model, params, encoder_input_tokens, max_decode_length: int, key, *,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  task_slots_b=None, guard: RepetitionGuard | None = None, prefix_bl=None):
  """Temperature sampling with optional top-k and top-p cuts, over the KV cache.

  The same key gives the same tokens; step i uses fold_in(key, i). temperature=0
  and top_k=1 both decode greedily.

  Returns:
    (tokens [B, L] with padding after EOS, log-likelihood [B] of those tokens under
    the unmodified model, EOS included).
  """
  if temperature == 0.0:
    choose = _argmax
  else:
    choose = functools.partial(sample_logits, temperature=temperature, top_k=top_k,
                               top_p=top_p)
  return _decode_loop(model, params, encoder_input_tokens, max_decode_length, choose, key,
                      task_slots_b, guard, prefix_bl)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "num_beams",
                                             "num_returned", "guard"))
def beam_decode(model, params, encoder_input_tokens, max_decode_length: int,
                num_beams: int = 4, alpha=0.6, num_returned: int | None = None,
                task_slots_b=None, guard: RepetitionGuard | None = None, prefix_bl=None
                ) -> beam_search.BeamResult:
  """Beam search over the KV cache, expanded to batch x beams rows.

  Args:
    num_returned: how many best beams must be final before the search may stop
      (default all; 1 when only the best sequence is wanted).
  Returns:
    beam_search.BeamResult: [B, K, L] sequences and [B, K] log-likelihoods and
    length-penalised scores, best first.
  """
  b = encoder_input_tokens.shape[0]
  encoded = encode(model, params, encoder_input_tokens, task_slots_b)
  # Row b * K + k is beam k of input b. The cross-attention K/V stay one copy per
  # input, which its K beams read together (layers.Attention groups them), so
  # only the self-attention cache is copied to the beams.
  cache = init_cache(model, params, encoded, encoder_input_tokens, max_decode_length,
                     task_slots_b)
  cache = map_cache_rows(lambda x, axis: jnp.repeat(x, num_beams, axis=axis), cache,
                         skip=_CROSS_CACHE_LEAVES)

  def tokens_to_logits(cache, tokens_f):
    return decode_step(model, params, cache, encoded, encoder_input_tokens, tokens_f)

  def reorder_cache(cache, rows_f):
    # A beam's parent is a beam of the same input: the shared cross-attention K/V
    # stay as they are.
    return map_cache_rows(lambda x, axis: jnp.take(x, rows_f, axis=axis), cache,
                          skip=_CROSS_CACHE_LEAVES)

  step_guard = guard
  if prefix_bl is not None:
    step_guard = _forcing_guard(jnp.repeat(prefix_bl, num_beams, axis=0), guard)
  return beam_search.beam_search(
      tokens_to_logits, reorder_cache, cache, batch_size=b, num_beams=num_beams,
      max_decode_length=max_decode_length, alpha=alpha, eos_id=EOS_ID, start_id=PAD_ID,
      num_returned=num_returned, guard=step_guard,
      vocab_major=_logits_vocab_major(model, params, b * num_beams))


def _forcing_guard(prefix_fl, guard):
  """A beam step guard that, where prefix_fl[:, i] is not 0, leaves that token the only
  one a beam can extend by, at log-probability 0 (so a forced prefix adds nothing to a
  beam's score); after `guard`, if any. EOS ranks below every other excluded token, so
  the empty beams that forcing leaves never finish."""
  def step_guard(logprob_fv, seqs_fl, i, start_id):
    if guard is not None:
      logprob_fv = guard(logprob_fv, seqs_fl, i, start_id)
    forced_f = jax.lax.dynamic_index_in_dim(prefix_fl, i, axis=1, keepdims=False)
    token_v = jnp.arange(logprob_fv.shape[-1])
    excluded_v = jnp.where(token_v == EOS_ID, 2 * beam_search.NEG_INF, beam_search.NEG_INF)
    only_fv = jnp.where(token_v[None] == forced_f[:, None], 0.0, excluded_v[None])
    return jnp.where((forced_f > 0)[:, None], only_fv, logprob_fv)
  return step_guard


def _logits_vocab_major(model, params, rows: int) -> bool:
  """Whether a decode step's [rows, V] logits come out of layers.out_in_matmul, laid
  out [V, rows] (t5.Decoder's choice: a tied embedding, or an untied output
  kernel's [out, in] copy, on one CPU device, for rows that layers.reads_out_in)."""
  cfg = model.config
  if not (devices.on_one_cpu_device() and layers.reads_out_in(rows, cfg.vocab_size)):
    return False
  return cfg.tie_word_embeddings or (
      isinstance(params, DecodeWeights) and "logits_dense" in params.layouts.get("decoder", {}))


def generate(model, params, encoder_input_tokens, *, max_decode_length: int,
             strategy: DecodeConfig = DecodeConfig(), rng=None,
             task_slots_b=None, prefix_bl=None) -> DecodeOutput:
  """Decodes a batch with the strategy's method.

  Args:
    model: a t5.Transformer.
    params: its parameters (unboxed; sharded or not), or prepare_weights(model, params)
      (faster where it makes a copy; the same tokens).
    encoder_input_tokens: [B, S] int, 0 on padding.
    max_decode_length: L, the most tokens decoded per row (EOS included).
    strategy: a DecodeConfig.
    rng: PRNG key for sampling; default jax.random.key(strategy.seed).
    task_slots_b: [B] each row's task slot (model.config.slot_of_task), for
      models with task slots; None otherwise.
    prefix_bl: None, or [B, L] int tokens each output starts with (0-padded; a row of
      zeros has none): the decoder continues them, and they add nothing to the
      log-likelihood or score.
  Returns:
    DecodeOutput.
  """
  s = strategy
  if s.method == "beam":
    res = beam_decode(model, params, encoder_input_tokens, max_decode_length, s.num_beams,
                      s.alpha, num_returned=s.num_beams if s.return_all_beams else 1,
                      task_slots_b=task_slots_b, guard=s.guard, prefix_bl=prefix_bl)
    extra = (res.seqs_bkl, res.logprob_bk, res.score_bk) if s.return_all_beams else ()
    return DecodeOutput(res.seqs_bkl[:, 0], res.logprob_bk[:, 0], res.score_bk[:, 0], *extra)
  if s.method == "sample" and s.temperature > 0.0:
    key = jax.random.key(s.seed) if rng is None else rng
    tokens_bl, logprob_b = sample_decode(model, params, encoder_input_tokens,
                                         max_decode_length, key, temperature=s.temperature,
                                         top_k=s.top_k, top_p=s.top_p,
                                         task_slots_b=task_slots_b, guard=s.guard,
                                         prefix_bl=prefix_bl)
  else:
    tokens_bl, logprob_b = greedy_decode(model, params, encoder_input_tokens,
                                         max_decode_length, task_slots_b, s.guard, prefix_bl)
  return DecodeOutput(tokens_bl, logprob_b, logprob_b)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def greedy_decode_uncached(model, params, encoder_input_tokens, max_decode_length: int,
                           task_slots_b=None):
  """Reference greedy decoding that recomputes the whole decoder every step."""
  b = encoder_input_tokens.shape[0]
  encoded = encode(model, params, encoder_input_tokens, task_slots_b)

  def body(i, carry):
    out_bl, done_b = carry
    inputs_bl = jnp.concatenate([jnp.full((b, 1), PAD_ID, jnp.int32), out_bl[:, :-1]], axis=1)
    logits_blv = model.apply(_variables(params), encoded, encoder_input_tokens, inputs_bl,
                             method=model.decode, decoder_task_slots=row_slots(task_slots_b))
    next_b = jnp.argmax(logits_blv[:, i], axis=-1).astype(jnp.int32)
    next_b = jnp.where(done_b, PAD_ID, next_b)
    return out_bl.at[:, i].set(next_b), done_b | (next_b == EOS_ID)

  out_bl, _ = jax.lax.fori_loop(0, max_decode_length, body,
                                (jnp.zeros((b, max_decode_length), jnp.int32),
                                 jnp.zeros((b,), bool)))
  return out_bl
