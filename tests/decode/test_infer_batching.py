"""Predictor.generate and .score over inputs of mixed lengths: batches of similar
length (sorted, padded to a few shapes), results back in input order and equal to
decoding all inputs in one unsorted batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5jax.decode import decoding, predictor as inference
from t5jax.data import vocab
from t5jax.model import config as model_config

CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=32128, d_model=64,
                              d_kv=16, d_ff=128, num_heads=4, dropout_rate=0.0)
WORDS = "the cat sat on a mat while two dogs ran after every bird in sight".split()


@pytest.fixture(scope="module")
def predictor():
  model = inference.t5.Transformer(CFG)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(1), tokens, tokens)["params"])
  # A larger EOS column, so that rows end at different steps (as a trained model's do).
  dec = dict(params["decoder"])
  dec["logits_dense"] = dec["logits_dense"].at[:, decoding.EOS_ID].multiply(3.0)
  return inference.Predictor(CFG, {**params, "decoder": dec}, vocab.get_vocabulary())


def _texts():
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(WORDS, n)) for n in (30, 2, 11, 5, 1, 17)]


def test_length_batches_sort_and_cover_every_index():
  batches = inference.length_batches([5, 1, 9, 3, 7, 2, 8], 3)
  assert batches == [[1, 5, 3], [0, 4, 6], [2]]


def test_generate_keeps_input_order_and_equals_one_unsorted_batch(predictor):
  texts = _texts()
  got = predictor.generate(texts, batch_size=3, max_decode_length=8)
  rows = predictor.encode(texts, 512)
  one_batch = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, r in enumerate(rows):
    one_batch[i, :len(r)] = r
  ref = predictor.generate_tokens(one_batch, decoding.DecodeConfig(), 8)
  assert [g.tokens for g in got] == np.asarray(ref.tokens_bl).tolist()
  np.testing.assert_allclose([g.log_likelihood for g in got], ref.logprob_b, rtol=1e-4)
  lengths = {int(np.argmax(np.r_[np.asarray(g.tokens) == decoding.EOS_ID, True])) for g in got}
  assert len(lengths) >= 3  # rows really end at different steps


def test_score_keeps_input_order(predictor):
  texts = _texts()
  targets = texts[::-1]
  sorted_batches = predictor.score(texts, targets, batch_size=3)
  one_batch = predictor.score(texts, targets, batch_size=len(texts))
  np.testing.assert_allclose(sorted_batches, one_batch, rtol=1e-4)
  assert len(set(np.round(one_batch, 3))) == len(texts)


def test_generate_prepares_the_weights_once_and_decodes_the_same(predictor, monkeypatch):
  texts = _texts()
  want = predictor.generate(texts, batch_size=3, max_decode_length=8)
  assert predictor.decode_weights() is predictor.params  # 8 test devices: nothing to copy
  monkeypatch.setattr(decoding.devices, "on_one_cpu_device", lambda: True)
  monkeypatch.setattr(predictor, "params", dict(predictor.params))  # replaced: made again
  prepared = predictor.decode_weights()
  assert isinstance(prepared, decoding.DecodeWeights)
  got = predictor.generate(texts, batch_size=3, max_decode_length=8)
  assert predictor.decode_weights() is prepared  # once per set of weights
  assert [g.tokens for g in got] == [g.tokens for g in want]
  np.testing.assert_allclose([g.log_likelihood for g in got],
                             [g.log_likelihood for g in want], rtol=1e-4)
