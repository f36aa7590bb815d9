"""Hugging Face PEFT adapters both ways: a LoRA or prompt made with peft on a
T5ForConditionalGeneration gives the same logits in t5jax, t5jax writes the same
adapter back bit for bit (PeftModel loads it), and a merged export equals PEFT's
merge_and_unload()."""
import json

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from t5jax import checkpoint
from t5jax.interop import convert, peft_io
from t5jax.model import param_tree, t5

ATOL = 1e-4
# ByT5's 384 byte ids: a model converted from Hugging Face needs its tokenizer (bytes here).
HF_CONFIG = dict(vocab_size=384, d_model=48, d_kv=16, d_ff=96, num_heads=4, num_layers=2,
                 num_decoder_layers=3, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                 dropout_rate=0.0, decoder_start_token_id=0, tokenizer_class="ByT5Tokenizer")


def _base(seed=0):
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIG)).eval()
  with torch.no_grad():
    model.shared.weight.mul_(0.1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.2)
  return model


def _batch(rng):
  enc = np.zeros((3, 12), np.int64)
  for row, n in enumerate((12, 7, 2)):
    enc[row, :n] = rng.integers(2, 384, n)
  dec_in = np.concatenate([np.zeros((3, 1), np.int64), rng.integers(2, 384, (3, 5))], axis=1)
  return enc, dec_in


def _hf_logits(model, enc, dec_in):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                 decoder_input_ids=torch.tensor(dec_in)).logits.numpy()


def _our_logits(ckpt_dir, enc, dec_in):
  cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt_dir)).replace(
      dtype="float32")
  model = t5.Transformer(cfg)
  params = checkpoint.load_params(ckpt_dir, param_tree.abstract_params(model))
  return np.asarray(model.apply({"params": params}, enc.astype(np.int32),
                                dec_in.astype(np.int32)))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  root = tmp_path_factory.mktemp("peft")
  _base().save_pretrained(root / "hf")
  convert.hf_to_checkpoint(str(root / "hf"), str(root / "base"))
  return root


def _randomize_lora_b(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_B" in name:  # PEFT starts B at zero: the adapter would do nothing
        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_lora_adapter_from_peft_gives_its_logits_and_goes_back_bit_for_bit(base, tmp_path):
  hf_peft = peft.get_peft_model(_base(), peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=["q", "v", "o", "wi_0", "wo"], lora_dropout=0.0,
      task_type="SEQ_2_SEQ_LM"))
  _randomize_lora_b(hf_peft, 1)
  hf_peft.eval()
  hf_peft.save_pretrained(tmp_path / "adapter")
  enc, dec_in = _batch(np.random.default_rng(0))
  want = _hf_logits(hf_peft, enc, dec_in)
  plain = _hf_logits(_base(), enc, dec_in)
  assert np.abs(want - plain).max() > 100 * ATOL  # the adapter changes the logits

  convert.peft_to_checkpoint(str(tmp_path / "adapter"), str(base / "base"),
                             str(tmp_path / "ours"))
  # The t5jax checkpoint holds the adapter only; the base is referenced.
  meta = checkpoint.read_meta(str(tmp_path / "ours"))
  assert meta["peft"]["base"] == checkpoint.checkpoints_dir(str(base / "base"))
  assert meta["model_config"]["lora_rank"] == 4
  np.testing.assert_allclose(_our_logits(str(tmp_path / "ours"), enc, dec_in), want,
                             atol=ATOL, rtol=0)

  # Back to PEFT: the same tensors, bit for bit, and PeftModel loads them.
  what = convert.checkpoint_to_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
  assert what == "PEFT adapter directory"
  original = load_file(tmp_path / "adapter" / peft_io.WEIGHTS_NAME)
  written = load_file(tmp_path / "back" / peft_io.WEIGHTS_NAME)
  assert sorted(original) == sorted(written)
  for key in original:
    np.testing.assert_array_equal(original[key], written[key])
  config = json.loads((tmp_path / "back" / peft_io.CONFIG_NAME).read_text())
  assert (config["r"], config["lora_alpha"]) == (4, 8.0)
  reloaded = peft.PeftModel.from_pretrained(_base(), tmp_path / "back").eval()
  np.testing.assert_allclose(_hf_logits(reloaded, enc, dec_in), want, atol=ATOL, rtol=0)

  # Merged: a plain T5 directory with W + (alpha / r) B A, as merge_and_unload() computes.
  convert.checkpoint_to_hf(str(tmp_path / "ours"), str(tmp_path / "merged"), merge=True)
  merged = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
  np.testing.assert_allclose(_hf_logits(merged, enc, dec_in), want, atol=ATOL, rtol=0)
  unloaded = hf_peft.merge_and_unload().state_dict()
  ours = merged.state_dict()
  key = "encoder.block.1.layer.0.SelfAttention.q.weight"
  np.testing.assert_allclose(ours[key].numpy(), unloaded[key].numpy(), atol=1e-6, rtol=0)


def test_prompt_tuning_adapter_from_peft_gives_its_logits(base, tmp_path):
  hf_peft = peft.get_peft_model(_base(), peft.PromptTuningConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5, num_transformer_submodules=1))
  with torch.no_grad():
    hf_peft.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
  hf_peft.eval()
  hf_peft.save_pretrained(tmp_path / "adapter")
  enc, dec_in = _batch(np.random.default_rng(1))
  want = _hf_logits(hf_peft, enc, dec_in)
  convert.peft_to_checkpoint(str(tmp_path / "adapter"), str(base / "base"),
                             str(tmp_path / "ours"))
  np.testing.assert_allclose(_our_logits(str(tmp_path / "ours"), enc, dec_in), want,
                             atol=ATOL, rtol=0)
  assert np.abs(want - _hf_logits(_base(), enc, dec_in)).max() > 100 * ATOL
  convert.checkpoint_to_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
  np.testing.assert_array_equal(
      load_file(tmp_path / "back" / peft_io.WEIGHTS_NAME)[peft_io.PROMPT_KEY],
      load_file(tmp_path / "adapter" / peft_io.WEIGHTS_NAME)[peft_io.PROMPT_KEY])
  with pytest.raises(ValueError, match="cannot be merged"):
    convert.checkpoint_to_hf(str(tmp_path / "ours"), str(tmp_path / "m"), merge=True)


def test_adapter_for_another_base_model_is_one_line(base, tmp_path):
  other = dict(HF_CONFIG, d_model=32)
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**other))
  peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=["q", "v"],
                                          task_type="SEQ_2_SEQ_LM")).save_pretrained(
      tmp_path / "adapter")
  with pytest.raises(ValueError, match=r"has shape \(4, 32\), this base model needs \(4, 48\); "
                                       "the adapter was made for another base model"):
    convert.peft_to_checkpoint(str(tmp_path / "adapter"), str(base / "base"), str(tmp_path / "o"))
  config = json.loads((tmp_path / "adapter" / peft_io.CONFIG_NAME).read_text())
  (tmp_path / "adapter" / peft_io.CONFIG_NAME).write_text(json.dumps(
      {**config, "use_dora": True}))
  with pytest.raises(ValueError, match="sets use_dora=True; t5jax computes LoRA with "
                                       "use_dora=False only"):
    convert.peft_to_checkpoint(str(tmp_path / "adapter"), str(base / "base"), str(tmp_path / "o"))


def test_per_task_lora_exports_each_tasks_own_adapter():
  """--task NAME of a per-task LoRA writes (and merges) that task's own LoRA."""
  import flax
  from t5jax.model import config as model_config
  cfg = model_config.get_config("t5_1_1_tiny", lora_rank=4, lora_targets=("q", "v", "wo"),
                                task_slots=("a", "b"), peft_per_task=True)
  tokens = np.ones((2, 4), np.int32)
  slots = np.asarray([[0], [1]], np.int32)
  params = flax.linen.meta.unbox(t5.Transformer(cfg).init(
      jax.random.key(0), tokens, tokens, encoder_task_slots=slots,
      decoder_task_slots=slots)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: rng.normal(0, 0.1, x.shape).astype(np.float32)
      if str(getattr(path[-1], "key", "")) == "b" else np.asarray(x), params)
  node = params["encoder"]["layers_1"]["attention"]
  for slot in (0, 1):
    state = peft_io.adapter_state_dict(cfg, params, slot)
    key = "base_model.model.encoder.block.1.layer.0.SelfAttention.q.lora_B.weight"
    np.testing.assert_array_equal(
        state[key], np.asarray(node[f"lora_q_task{slot}"]["b"]).reshape(4, -1).T)
    merged_cfg, merged = peft_io.merged(cfg, params, slot)
    assert merged_cfg.lora_rank == 0 and not merged_cfg.task_slots
    want = np.asarray(node["query"]) + 8.0 * np.einsum(
        "dr,rnh->dnh", node[f"lora_q_task{slot}"]["a"], node[f"lora_q_task{slot}"]["b"])
    np.testing.assert_allclose(merged["encoder"]["layers_1"]["attention"]["query"], want,
                               rtol=1e-5, atol=1e-6)
