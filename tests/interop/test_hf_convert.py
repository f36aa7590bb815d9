"""Hugging Face conversion without torch: config.json mapping, tensor layout, the
exact round trip through files, and the one-line errors for bad inputs."""
import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5jax.interop import (hf_config_from_t5config, hf_state_dict_from_params, load_hf_dir,
                           params_from_hf_state_dict, save_hf_dir, t5config_from_hf)
from t5jax.model import config as model_config
from t5jax.model import t5

SPIECE = pathlib.Path(__file__).resolve().parents[2] / "t5jax" / "assets" / "t5_spm" / "spiece.model"

# config.json of google-t5/t5-small, google/t5-v1_1-small and google/mt5-small (as on the
# hub, minus task_specific_params).
T5_SMALL = {"architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64,
            "d_model": 512, "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1,
            "initializer_factor": 1.0, "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06,
            "model_type": "t5", "n_positions": 512, "num_heads": 8, "num_layers": 6,
            "output_past": True, "pad_token_id": 0, "relative_attention_num_buckets": 32,
            "vocab_size": 32128}
T5_V1_1_SMALL = {"architectures": ["T5ForConditionalGeneration"], "d_ff": 1024, "d_kv": 64,
                 "d_model": 512, "decoder_start_token_id": 0, "dropout_rate": 0.1,
                 "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
                 "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5",
                 "num_decoder_layers": 8, "num_heads": 6, "num_layers": 8, "output_past": True,
                 "pad_token_id": 0, "relative_attention_num_buckets": 32,
                 "tie_word_embeddings": False, "vocab_size": 32128}
MT5_SMALL = {**T5_V1_1_SMALL, "architectures": ["MT5ForConditionalGeneration"],
             "model_type": "mt5", "tokenizer_class": "T5Tokenizer", "vocab_size": 250112}

TINY = dict(vocab_size=40, d_model=12, d_kv=5, d_ff=20, num_heads=3, num_encoder_layers=2,
            num_decoder_layers=3, relative_attention_num_buckets=8)
TINY_CONFIGS = {
    "relu_tied": model_config.T5Config(**TINY, feed_forward="relu", tie_word_embeddings=True),
    "gated_untied": model_config.T5Config(**TINY, feed_forward="gated-gelu",
                                          tie_word_embeddings=False),
}


def _random_params(cfg, seed=0):
  """Random values in the (boxed) tree that init makes, without compiling init."""
  tokens = np.ones((1, 4), np.int32)
  boxed = jax.eval_shape(lambda: t5.Transformer(cfg).init(jax.random.key(0), tokens, tokens))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), boxed["params"])


def _one_line_error(exc_info, *fragments):
  msg = str(exc_info.value)
  assert "\n" not in msg, msg
  for fragment in fragments:
    assert fragment in msg, msg


# ---- config.json ----

@pytest.mark.parametrize("hf, size, overrides", [
    (T5_SMALL, "t5_1_0_small", {}),
    (T5_V1_1_SMALL, "t5_1_1_small", dict(dropout_rate=0.1)),  # the hub config keeps 0.1
    (MT5_SMALL, "mt5_small", dict(dropout_rate=0.1)),
])
def test_hub_configs_map_to_our_sizes(hf, size, overrides):
  assert t5config_from_hf(hf) == model_config.get_config(size, **overrides)


def test_transformers_5_form_of_an_untied_config_is_untied():
  # transformers 5.x writes tie_word_embeddings=true and keeps 1.1's "no scaling" here.
  hf = {**T5_V1_1_SMALL, "tie_word_embeddings": True, "scale_decoder_outputs": False,
        "dense_act_fn": "gelu_new", "is_gated_act": True}
  assert not t5config_from_hf(hf).tie_word_embeddings
  assert t5config_from_hf({**T5_SMALL, "scale_decoder_outputs": True}).tie_word_embeddings


@pytest.mark.parametrize("size", sorted(model_config.SIZES))
def test_config_round_trips(size):
  cfg = model_config.get_config(size)
  assert t5config_from_hf(hf_config_from_t5config(cfg)) == cfg


def test_exported_config_uses_hub_spelling():
  hf = hf_config_from_t5config(model_config.get_config("t5_1_1_base", num_decoder_layers=4))
  assert hf["tie_word_embeddings"] is False and hf["feed_forward_proj"] == "gated-gelu"
  assert (hf["num_layers"], hf["num_decoder_layers"]) == (12, 4)
  assert hf["dense_act_fn"] == "gelu_new" and hf["is_gated_act"] is True


@pytest.mark.parametrize("hf, feed_forward", [
    (dict(feed_forward_proj="gated-silu"), "gated-silu"),  # UL2, Flan-UL2
    (dict(feed_forward_proj="gelu"), "gelu"),
    (dict(feed_forward_proj="gated-gelu_new"), "gated-gelu"),
    (dict(feed_forward_proj="gated-gelu", dense_act_fn="gelu_pytorch_tanh"), "gated-gelu"),
    (dict(feed_forward_proj="swish"), "swish"),
])
def test_activations_map_and_round_trip(hf, feed_forward):
  cfg = t5config_from_hf({**T5_SMALL, **hf})
  assert cfg.feed_forward == feed_forward
  assert t5config_from_hf(hf_config_from_t5config(cfg)) == cfg


@pytest.mark.parametrize("change, fragment", [
    (dict(feed_forward_proj="gated-laplace"), "feed_forward_proj='gated-laplace'"),
    (dict(feed_forward_proj="xielu"), "dense_act_fn='xielu'"),
    # transformers runs the saved dense_act_fn: a gated exact GELU has no name of ours.
    (dict(feed_forward_proj="gated-gelu", dense_act_fn="gelu"), "dense_act_fn='gelu'"),
    (dict(model_type="longt5"), "model_type='longt5'"),
    (dict(pad_token_id=3), "pad_token_id=3"),
    (dict(eos_token_id=[1, 2]), "eos_token_id=[1, 2]"),
    (dict(is_encoder_decoder=False), "is_encoder_decoder"),
])
def test_unsupported_configs_are_rejected(change, fragment):
  with pytest.raises(ValueError) as e:
    t5config_from_hf({**T5_SMALL, **change})
  _one_line_error(e, fragment)


# ---- tensors ----

@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_state_dict_round_trip_is_exact_and_keeps_the_tree(name):
  cfg = TINY_CONFIGS[name]
  boxed = _random_params(cfg)
  params = nn.meta.unbox(boxed)
  state = hf_state_dict_from_params(boxed, cfg)
  # 2 stacks of (attention 4 + norms) + MLP + relpos + final norms + embedding (+ lm_head)
  mlp = 3 if cfg.gated_mlp else 2
  per_enc, per_dec = 4 + mlp + 2, 8 + mlp + 3
  expected = 1 + 2 * per_enc + 3 * per_dec + 2 + 2 + (0 if cfg.tie_word_embeddings else 1)
  assert len(state) == expected
  back = params_from_hf_state_dict(state, cfg)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_attention_layout_matches_torch_linear():
  """HF q is [N*H, D] with row n*H + h; ours is [D, N, H]; HF o is [D, N*H]."""
  cfg = TINY_CONFIGS["gated_untied"]
  params = nn.meta.unbox(_random_params(cfg))
  state = hf_state_dict_from_params(params, cfg)
  ours_q = params["decoder"]["layers_2"]["encoder_decoder_attention"]["query"]
  hf_q = state["decoder.block.2.layer.1.EncDecAttention.q.weight"]
  ours_o = params["encoder"]["layers_1"]["attention"]["out"]
  hf_o = state["encoder.block.1.layer.0.SelfAttention.o.weight"]
  d, n, h = 7, 2, 4
  assert hf_q.shape == (15, 12) and hf_q[n * 5 + h, d] == ours_q[d, n, h]
  assert hf_o.shape == (12, 15) and hf_o[d, n * 5 + h] == ours_o[n, h, d]
  np.testing.assert_array_equal(state["lm_head.weight"], params["decoder"]["logits_dense"].T)
  np.testing.assert_array_equal(state["decoder.block.0.layer.2.DenseReluDense.wi_1.weight"],
                                params["decoder"]["layers_0"]["mlp"]["wi_1"].T)


@pytest.fixture
def relu_state():
  cfg = TINY_CONFIGS["relu_tied"]
  return cfg, hf_state_dict_from_params(_random_params(cfg), cfg)


def test_embedding_aliases_and_a_repeated_tied_lm_head_load(relu_state):
  cfg, state = relu_state
  emb = state["shared.weight"]
  aliased = {k: v for k, v in state.items() if k != "shared.weight"}
  aliased.update({"encoder.embed_tokens.weight": emb, "decoder.embed_tokens.weight": emb,
                  "lm_head.weight": emb})
  np.testing.assert_array_equal(params_from_hf_state_dict(aliased, cfg)["token_embedder"], emb)


@pytest.mark.parametrize("edit, error_fragments", [
    ("drop", ["lacks 1 tensor", "'decoder.block.2.layer.2.DenseReluDense.wo.weight'",
              "3 decoder layers"]),
    ("extra", ["1 tensor(s) the config does not use",
               "'encoder.block.2.layer.0.layer_norm.weight'"]),
    ("vocab", ["'shared.weight' has shape (48, 12)", "expects (40, 12)", "vocab_size=40"]),
    ("alias", ["'encoder.embed_tokens.weight' differ"]),
    ("lm_head", ["'lm_head.weight' that differs", "scaled, untied"]),
])
def test_bad_checkpoints_name_the_tensor(relu_state, edit, error_fragments):
  cfg, state = relu_state
  state = dict(state)
  if edit == "drop":
    del state["decoder.block.2.layer.2.DenseReluDense.wo.weight"]
  elif edit == "extra":
    state["encoder.block.2.layer.0.layer_norm.weight"] = np.ones(12, np.float32)
  elif edit == "vocab":
    state["shared.weight"] = np.zeros((48, 12), np.float32)
  elif edit == "alias":
    state["encoder.embed_tokens.weight"] = state["shared.weight"] + 1
  elif edit == "lm_head":
    state["lm_head.weight"] = state["shared.weight"] * 2
  with pytest.raises(ValueError) as e:
    params_from_hf_state_dict(state, cfg)
  _one_line_error(e, *error_fragments)


def test_bad_params_name_the_parameter():
  cfg = TINY_CONFIGS["gated_untied"]
  params = nn.meta.unbox(_random_params(cfg))
  del params["decoder"]["logits_dense"]
  with pytest.raises(ValueError) as e:
    hf_state_dict_from_params(params, cfg)
  _one_line_error(e, "'decoder/logits_dense'")
  with pytest.raises(ValueError) as e:  # params of the tied model for an untied config
    hf_state_dict_from_params(nn.meta.unbox(_random_params(TINY_CONFIGS["relu_tied"])), cfg)
  _one_line_error(e, "params lack", "wi_0")
  params = nn.meta.unbox(_random_params(cfg))
  params["encoder"]["relpos_bias"]["rel_embedding"] = np.zeros((32, 3), np.float32)
  with pytest.raises(ValueError) as e:
    hf_state_dict_from_params(params, cfg)
  _one_line_error(e, "'encoder/relpos_bias/rel_embedding' has shape (32, 3)", "expects (8, 3)")


# ---- files ----

def test_save_and_load_directory(tmp_path):
  cfg = TINY_CONFIGS["gated_untied"]
  params = nn.meta.unbox(_random_params(cfg))
  save_hf_dir(cfg, params, tmp_path, spiece_model_path=SPIECE)
  assert (tmp_path / "spiece.model").read_bytes() == SPIECE.read_bytes()
  assert json.loads((tmp_path / "config.json").read_text())["num_decoder_layers"] == 3
  loaded_cfg, loaded = load_hf_dir(tmp_path)
  assert loaded_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_sharded_save_and_resave(tmp_path):
  cfg = TINY_CONFIGS["relu_tied"]
  params = nn.meta.unbox(_random_params(cfg))
  save_hf_dir(cfg, params, tmp_path, max_shard_bytes=2_000)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  assert index["metadata"]["total_size"] == total
  jax.tree.map(np.testing.assert_array_equal, load_hf_dir(tmp_path)[1], params)
  # Saving again unsharded replaces the shards rather than leaving them to confuse a loader.
  save_hf_dir(cfg, params, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    load_hf_dir(tmp_path)
  _one_line_error(e, "config.json")
  (tmp_path / "config.json").write_text(json.dumps(hf_config_from_t5config(
      TINY_CONFIGS["relu_tied"])))
  with pytest.raises(FileNotFoundError) as e:
    load_hf_dir(tmp_path)
  _one_line_error(e, "model.safetensors", "pytorch_model.bin")

  cfg = TINY_CONFIGS["relu_tied"]
  params = nn.meta.unbox(_random_params(cfg))
  save_hf_dir(cfg, params, tmp_path, max_shard_bytes=2_000)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  lost = sorted(set(index["weight_map"].values()))[1]
  (tmp_path / lost).unlink()
  with pytest.raises(FileNotFoundError) as e:
    load_hf_dir(tmp_path)
  _one_line_error(e, lost, "model.safetensors.index.json")

  with pytest.raises(FileNotFoundError) as e:
    save_hf_dir(cfg, params, tmp_path / "out", spiece_model_path=tmp_path / "nope.model")
  _one_line_error(e, "nope.model")
  assert not (tmp_path / "out").exists()  # nothing written on a bad call
  with pytest.raises(ValueError) as e:
    save_hf_dir(cfg, params, tmp_path / "out", max_shard_bytes=0)
  _one_line_error(e, "max_shard_bytes")
