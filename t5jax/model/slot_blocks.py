"""Tokens sorted by task slot into blocks, so that per-slot weights run as one
batched matmul (see task_routing.py for the scheme and its cost), and the names of
per-slot parameter copies."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

COPY_SUFFIX = "_task"
# A slot's last block is padded: K blocks of padding at most, about N / PADDING_SHARE.
PADDING_SHARE = 8


def copy_name(name: str, slot: int) -> str:
  return f"{name}{COPY_SUFFIX}{slot}"


def select_by_slot(outputs: list, slots_bt):
  """Per token, the output of its slot: outputs[k] is slot k's [B, T, ...] result."""
  out = outputs[0]
  for k in range(1, len(outputs)):
    out = jnp.where((slots_bt == k)[..., None], outputs[k], out)
  return out


class Blocks(NamedTuple):
  """Where each token sits once tokens are sorted by slot into blocks (see above)."""
  source_jc: jax.Array   # flat index of the token at each block place; N on padding
  owner_j: jax.Array     # the slot whose weights block j uses
  place_n: jax.Array     # each token's place in the flattened [J * C] blocks


def block_size(num_tokens: int, num_slots: int) -> int:
  """Tokens per block: K padded blocks cost about 1/PADDING_SHARE of the tokens."""
  return max(1, -(-num_tokens // (PADDING_SHARE * num_slots)))


def plan_blocks(slots_bt, num_slots: int) -> Blocks:
  """Sorts the tokens of [B, T] by slot into blocks that each belong to one slot."""
  n = slots_bt.size
  c = block_size(n, num_slots)
  num_blocks = n // c + num_slots  # sum_k ceil(n_k / C) <= N // C + K
  slots_n = slots_bt.reshape(n).astype(jnp.int32)
  order_n = jnp.argsort(slots_n, stable=True)
  sorted_n = slots_n[order_n]
  count_k = jnp.bincount(slots_n, length=num_slots)
  blocks_k = -(-count_k // c)
  first_block_k = jnp.cumsum(blocks_k) - blocks_k
  rank_n = jnp.arange(n) - (jnp.cumsum(count_k) - count_k)[sorted_n]  # rank within its slot
  place_sorted_n = (first_block_k[sorted_n] + rank_n // c) * c + rank_n % c
  source = jnp.full((num_blocks * c,), n, jnp.int32).at[place_sorted_n].set(order_n)
  place_n = jnp.zeros((n,), jnp.int32).at[order_n].set(place_sorted_n)
  owner_j = jnp.searchsorted(jnp.cumsum(blocks_k), jnp.arange(num_blocks), side="right")
  return Blocks(source.reshape(num_blocks, c), jnp.minimum(owner_j, num_slots - 1), place_n)


def dispatch(blocks: Blocks, x_bt_):
  """[B, T, ...] -> [J, C, ...]: the tokens in their blocks (zeros on padding)."""
  x_n_ = x_bt_.reshape((-1,) + x_bt_.shape[2:])
  padded = jnp.concatenate([x_n_, jnp.zeros_like(x_n_[:1])])
  return padded[blocks.source_jc]


def combine(blocks: Blocks, y_jc_, batch_shape):
  """[J, C, ...] -> [B, T, ...]: each token's output back in its place."""
  y_flat = y_jc_.reshape((-1,) + y_jc_.shape[2:])
  return y_flat[blocks.place_n].reshape(tuple(batch_shape) + y_jc_.shape[2:])


def copies_by_block(parent: nn.Module, name: str, owner_j, dtype=None):
  """`parent`'s per-slot copies NAME_task{k} stacked per block: leaves [J, ...] (block j:
  its owner's)."""
  params = nn.meta.unbox(parent.variables["params"])  # boxed when applied to init's output
  copies = [params[copy_name(name, k)] for k in range(len(parent.config.task_slots))]
  def take(*leaves):
    stacked = jnp.stack(leaves)
    return jnp.take(stacked if dtype is None else stacked.astype(dtype), owner_j, axis=0)
  return jax.tree.map(take, *copies)
