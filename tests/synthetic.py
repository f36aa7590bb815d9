"""Packed encoder-decoder batches with known structure, for model-level tests."""
import jax
import jax.numpy as jnp
import numpy as np


def packed_batch(batch_size=8, length=16, vocab=500, num_tasks=2, seed=0):
  """Each row packs two examples (segments 1 and 2) followed by padding."""
  rng = np.random.default_rng(seed)
  feats = {k: np.zeros((batch_size, length), np.int32) for k in (
      "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
      "decoder_segment_ids", "decoder_positions", "decoder_task_ids", "encoder_task_ids")}
  for b in range(batch_size):
    for prefix in ("encoder", "decoder"):
      cut = int(rng.integers(3, length // 2))
      end = int(rng.integers(cut + 2, length + 1))
      for seg, (lo, hi) in enumerate([(0, cut), (cut, end)], start=1):
        n = hi - lo
        tokens = rng.integers(2, vocab, n).astype(np.int32)
        if prefix == "encoder":
          feats["encoder_input_tokens"][b, lo:hi] = tokens
        else:
          feats["decoder_target_tokens"][b, lo:hi] = tokens
          feats["decoder_input_tokens"][b, lo:hi] = np.concatenate([[0], tokens[:-1]])
          feats["decoder_loss_weights"][b, lo:hi] = 1
          feats["decoder_task_ids"][b, lo:hi] = int(rng.integers(0, num_tasks))
        feats[f"{prefix}_segment_ids"][b, lo:hi] = seg
        feats[f"{prefix}_positions"][b, lo:hi] = np.arange(n)
    # An example's encoder segment has its decoder segment's task.
    for seg in (1, 2):
      task = feats["decoder_task_ids"][b][feats["decoder_segment_ids"][b] == seg][0]
      feats["encoder_task_ids"][b][feats["encoder_segment_ids"][b] == seg] = task
  return feats


def unpack_row(batch, row, segment):
  """One packed example as its own unpacked single-row batch (same length)."""
  out = {}
  for prefix in ("encoder", "decoder"):
    mask = batch[f"{prefix}_segment_ids"][row] == segment
    n = int(mask.sum())
    for k, v in batch.items():
      if k.startswith(prefix):
        x = np.zeros((1, v.shape[1]), np.int32)
        x[0, :n] = v[row][mask]
        out[k] = x
  out["encoder_segment_ids"] = (out["encoder_input_tokens"] > 0).astype(np.int32)
  out["decoder_segment_ids"] = out["decoder_loss_weights"].copy()
  return out


def logits_and_grads(model, params, batch, vocab):
  """The model's logits on a packed batch, and the gradient of a fixed random
  projection of them: what two attention implementations must agree on."""
  args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
          batch["encoder_segment_ids"], batch["decoder_segment_ids"])
  shape = batch["decoder_input_tokens"].shape + (vocab,)
  weights_btv = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  logits = jax.jit(lambda p: model.apply({"params": p}, *args))
  loss = lambda p: jnp.sum(logits(p) * weights_btv)
  return logits(params), jax.jit(jax.grad(loss))(params)


def assert_close(got, want, rtol=1e-5, atol_of_max=1e-5, err_msg=""):
  """Two float32 computations of the same values, in different summation orders, agree.

  The absolute tolerance scales with the largest magnitude compared (`atol_of_max` of
  max |want|, about 80 float32 ulps of it): rounding error grows with the size of the
  sums' terms, and a fixed atol tuned on one CPU's kernels fails on another's (outputs
  that reach a few hundred differ by ~4e-5 between an Intel and an AMD machine; a logit
  near 0.02 among logits of magnitude 4 came out 4.6e-6 apart when one copy of a layer
  ran alone), while a wrong result (a token routed to another copy, a missed mask) is
  off by O(max)."""
  got, want = np.asarray(got), np.asarray(want)
  scale = float(np.abs(want).max()) if want.size else 0.0
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_of_max * scale + 1e-7,
                             err_msg=err_msg)


def assert_grads_close(got, want):
  """Two gradient trees equal up to fp32 rounding: each leaf within rtol 1e-4 and an
  absolute 1e-6 of its own largest entry (gradients that reach a few hundred)."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    assert_close(a, b, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
