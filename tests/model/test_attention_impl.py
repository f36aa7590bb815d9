"""attention_impl: jax.nn.dot_product_attention (the function behind cuDNN's fused
kernel, run with its "xla" implementation on CPU) computes what the einsums compute,
with T5's relative-position bias, no 1/sqrt(d) scaling, and packing, causal and
decode-cache masks."""
import jax
import numpy as np
import pytest

import synthetic
import tiny
from t5jax.decode import decoding
from t5jax.model import config as model_config
from t5jax.model import attention_kernels, t5

CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, dropout_rate=0.0,
                              num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture(scope="module")
def params():
  return tiny.init_params(CFG)


def test_dot_product_attention_equals_the_einsums_on_packed_rows(params):
  batch = synthetic.packed_batch(batch_size=4, length=16)
  logits_and_grads = lambda impl: synthetic.logits_and_grads(
      t5.Transformer(CFG.replace(attention_impl=impl)), params, batch, 512)
  (ours, g_ours), (fused, g_fused) = logits_and_grads("einsum"), logits_and_grads("xla")
  valid = batch["decoder_segment_ids"] > 0
  synthetic.assert_close(np.asarray(fused)[valid], np.asarray(ours)[valid])
  synthetic.assert_grads_close(g_fused, g_ours)


def test_dot_product_attention_decodes_like_the_einsums(params):
  tokens = synthetic.packed_batch(batch_size=3, length=16, seed=1)["encoder_input_tokens"]
  runs = [decoding.greedy_decode(t5.Transformer(CFG.replace(attention_impl=impl)), params,
                                 tokens, 10) for impl in ("einsum", "xla")]
  np.testing.assert_array_equal(np.asarray(runs[1][0]), np.asarray(runs[0][0]))
  np.testing.assert_allclose(np.asarray(runs[1][1]), np.asarray(runs[0][1]), rtol=1e-5)


def test_auto_picks_the_fused_kernel_only_where_it_applies():
  bf16 = CFG.replace(dtype="bfloat16")
  on_gpu = jax.default_backend() == "gpu"
  select = attention_kernels.select
  assert select(bf16, with_dropout=False) == ("cudnn" if on_gpu else "einsum")
  assert select(CFG, with_dropout=False) == "einsum"  # fp32
  dropping = bf16.replace(attention_impl="cudnn", dropout_rate=0.1)
  assert select(dropping, with_dropout=True) == "einsum"
  assert select(dropping, with_dropout=False) == "cudnn"
  with pytest.raises(ValueError, match="attention_impl='flash' is not one of"):
    CFG.replace(attention_impl="flash")
