"""Autoregressive decoding over a preallocated KV cache.

The encoder runs once per input; the cross-attention keys and values are
projected once, when the cache is created; each step feeds one token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

PAD_ID = 0  # T5 starts decoding from the pad id
EOS_ID = 1


def init_cache(model, params, encoded_bsd, encoder_input_tokens, max_decode_length: int):
  """Creates the decode cache (self-attention K/V zeros, cross-attention K/V)."""
  b = encoder_input_tokens.shape[0]
  dummy_bt = jnp.zeros((b, max_decode_length), jnp.int32)
  _, variables = model.apply({"params": params}, encoded_bsd, encoder_input_tokens, dummy_bt,
                             decode=True, method=model.decode, mutable=["cache"])
  return variables["cache"]


def decode_step(model, params, cache, encoded_bsd, encoder_input_tokens, token_b):
  """Logits [B, V] for the next position, and the updated cache."""
  logits_b1v, variables = model.apply(
      {"params": params, "cache": cache}, encoded_bsd, encoder_input_tokens,
      token_b[:, None], decode=True, method=model.decode, mutable=["cache"])
  return logits_b1v[:, 0], variables["cache"]


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def greedy_decode(model, params, encoder_input_tokens, max_decode_length: int):
  """Greedy decoding with the KV cache.

  Returns:
    (tokens [B, max_decode_length] with padding after EOS, log-probability [B] of
    the decoded sequence including EOS).
  """
  b = encoder_input_tokens.shape[0]
  encoded = model.apply({"params": params}, encoder_input_tokens, method=model.encode)
  cache = init_cache(model, params, encoded, encoder_input_tokens, max_decode_length)

  def cond(carry):
    i, _, _, _, done_b, _ = carry
    return (i < max_decode_length) & ~jnp.all(done_b)

  def body(carry):
    i, cache, prev_b, out_bl, done_b, score_b = carry
    logits_bv, cache = decode_step(model, params, cache, encoded, encoder_input_tokens, prev_b)
    logp_bv = jax.nn.log_softmax(logits_bv)
    next_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    score_b = score_b + jnp.where(done_b, 0.0, jnp.take_along_axis(logp_bv, next_b[:, None], 1)[:, 0])
    next_b = jnp.where(done_b, PAD_ID, next_b)
    out_bl = out_bl.at[:, i].set(next_b)
    return i + 1, cache, next_b, out_bl, done_b | (next_b == EOS_ID), score_b

  carry = (jnp.zeros((), jnp.int32), cache, jnp.full((b,), PAD_ID, jnp.int32),
           jnp.zeros((b, max_decode_length), jnp.int32), jnp.zeros((b,), bool),
           jnp.zeros((b,), jnp.float32))
  _, _, _, out_bl, _, score_b = jax.lax.while_loop(cond, body, carry)
  return out_bl, score_b


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def greedy_decode_uncached(model, params, encoder_input_tokens, max_decode_length: int):
  """Reference greedy decoding that recomputes the whole decoder every step."""
  b = encoder_input_tokens.shape[0]
  encoded = model.apply({"params": params}, encoder_input_tokens, method=model.encode)

  def body(i, carry):
    out_bl, done_b = carry
    inputs_bl = jnp.concatenate([jnp.full((b, 1), PAD_ID, jnp.int32), out_bl[:, :-1]], axis=1)
    logits_blv = model.apply({"params": params}, encoded, encoder_input_tokens, inputs_bl,
                             method=model.decode)
    next_b = jnp.argmax(logits_blv[:, i], axis=-1).astype(jnp.int32)
    next_b = jnp.where(done_b, PAD_ID, next_b)
    return out_bl.at[:, i].set(next_b), done_b | (next_b == EOS_ID)

  out_bl, _ = jax.lax.fori_loop(0, max_decode_length, body,
                                (jnp.zeros((b, max_decode_length), jnp.int32),
                                 jnp.zeros((b,), bool)))
  return out_bl
