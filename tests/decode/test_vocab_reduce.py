"""vocab_reduce computes what jnp.argmax and jax.nn.log_softmax compute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5jax.decode import vocab_reduce


@pytest.mark.parametrize("vocab", [32128, 250112, 1000, 7])  # 128 | V, and not
def test_argmax_is_jnp_argmax_including_ties(vocab):
  rng = np.random.default_rng(vocab)
  logits_bv = rng.normal(size=(6, vocab)).astype(np.float32)
  logits_bv[1, [vocab // 3, vocab - 1]] = 9.0      # a tie: the first index wins
  logits_bv[2, :] = 0.5                            # all equal: index 0
  logits_bv[3, :] = -np.inf                        # all masked: index 0
  logits_bv[3, vocab - 1] = -1e7                   # ... but one
  logits_bv[4, [0, vocab // 2]] = [3.0, 3.0]       # tie with the very first entry
  got = np.asarray(jax.jit(vocab_reduce.argmax)(jnp.asarray(logits_bv)))
  np.testing.assert_array_equal(got, np.argmax(logits_bv, axis=-1))
  assert got.dtype == np.int32


def test_argmax_keeps_leading_axes():
  logits_xyv = np.random.default_rng(0).normal(size=(3, 4, 300)).astype(np.float32)
  np.testing.assert_array_equal(vocab_reduce.argmax(jnp.asarray(logits_xyv)),
                                np.argmax(logits_xyv, axis=-1))


def test_log_softmax_is_jax_log_softmax():
  logits_btv = jax.random.normal(jax.random.key(0), (3, 5, 32128)) * 20.0
  got = jax.jit(vocab_reduce.log_softmax)(logits_btv)
  np.testing.assert_allclose(got, jax.nn.log_softmax(logits_btv), rtol=1e-6, atol=2e-5)
  np.testing.assert_allclose(jnp.sum(jnp.exp(got), axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n,k", [(4 * 32128, 8), (32128, 2), (1000, 8), (300, 4), (40, 3)])
def test_top_k_is_lax_top_k_including_ties(n, k):
  rng = np.random.default_rng(n + k)
  x_bn = rng.normal(size=(5, n)).astype(np.float32)
  x_bn[1] = rng.integers(0, 3, size=n)          # few distinct values: ties everywhere
  x_bn[2] = -1e7                                # all equal
  x_bn[2, [n - 1, n // 2]] = 1.0
  x_bn[3, : n // 2] = -np.inf                   # masked entries
  x_bn[4] = 0.0
  x_bn[4, [(5 * 128 + 3) % n, 3, 128 * (n // 256)]] = 2.0  # ties across blocks and in block 0
  want_values, want_index = jax.lax.top_k(jnp.asarray(x_bn), k)
  got_values, got_index = jax.jit(vocab_reduce.top_k, static_argnums=1)(jnp.asarray(x_bn), k)
  np.testing.assert_array_equal(got_values, want_values)
  np.testing.assert_array_equal(got_index, want_index)
