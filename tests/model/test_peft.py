"""LoRA and prompt tuning in the model: step 0 is the base model, a frozen base gets no
gradient nor optimizer state, per-task LoRA routes each token through its own task's
branch at one branch's cost, and bad settings are one-line errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny

from t5jax.model import config as model_config
from t5jax.model import peft, t5, task_params, trainable
from t5jax.train import losses, optim, step as train_step

TINY = model_config.get_config("t5_1_1_tiny", dtype="float32")
ALL = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


def _tokens(seed, shape=(4, 12)):
  rng = np.random.default_rng(seed)
  x = rng.integers(3, 500, shape).astype(np.int32)
  x[1, 7:] = 0  # padding
  return jnp.asarray(x)


def _slots(k_b, length):
  return jnp.broadcast_to(jnp.asarray(k_b, jnp.int32)[:, None], (len(k_b), length))


def _init(cfg, enc, dec, **kw):
  return tiny.init_params(cfg, 0, enc, dec, **kw)


def test_lora_at_initialisation_is_the_base_model():
  enc, dec = _tokens(0), _tokens(1, (4, 6))
  cfg = TINY.replace(lora_rank=4, lora_targets=ALL)
  params = _init(cfg, enc, dec)
  base = task_params.shared_only(params)
  lora = t5.Transformer(cfg).apply({"params": params}, enc, dec)
  plain = t5.Transformer(TINY).apply({"params": base}, enc, dec)
  np.testing.assert_array_equal(np.asarray(lora), np.asarray(plain))
  # A is PEFT's kaiming-uniform draw (|a| <= 1/sqrt(fan_in)), B is zero.
  q = params["encoder"]["layers_0"]["attention"]["lora_q"]
  assert q["a"].shape == (TINY.d_model, 4) and q["b"].shape == (4, TINY.num_heads, TINY.d_kv)
  assert 0.5 * TINY.d_model**-0.5 < float(jnp.max(jnp.abs(q["a"]))) <= TINY.d_model**-0.5
  assert not np.any(np.asarray(q["b"]))
  o = params["decoder"]["layers_1"]["encoder_decoder_attention"]["lora_o"]
  assert o["a"].shape == (TINY.num_heads, TINY.d_kv, 4) and o["b"].shape == (4, TINY.d_model)


def test_lora_branch_is_alpha_over_r_times_b_a():
  """One projection by hand: the model's q equals W x + (alpha / r) x A B."""
  cfg = TINY.replace(lora_rank=2, lora_alpha=6.0, lora_targets=("q",))
  enc, dec = _tokens(2), _tokens(3, (4, 6))
  params = _init(cfg, enc, dec)
  node = params["encoder"]["layers_0"]["attention"]
  rng = np.random.default_rng(0)
  node["lora_q"]["b"] = jnp.asarray(rng.normal(0, 0.5, node["lora_q"]["b"].shape), jnp.float32)
  merged = jax.tree.map(lambda x: x, task_params.shared_only(params))
  delta = np.einsum("dr,rnh->dnh", node["lora_q"]["a"], node["lora_q"]["b"]) * 3.0
  merged["encoder"]["layers_0"]["attention"]["query"] = node["query"] + delta
  want = t5.Transformer(TINY).apply({"params": merged}, enc, dec)
  got = t5.Transformer(cfg).apply({"params": params}, enc, dec)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5 * scale, rtol=0)
  assert float(jnp.max(jnp.abs(got - t5.Transformer(TINY).apply(
      {"params": task_params.shared_only(params)}, enc, dec)))) > 1e-3 * scale


def _per_task_case():
  enc, dec = _tokens(4), _tokens(5, (4, 6))
  cfg = TINY.replace(lora_rank=4, lora_targets=ALL, prompt_length=3, task_slots=("a", "b", "c"),
                     peft_per_task=True)
  slots_b = [2, 0, 2, 1]
  kw = dict(encoder_task_slots=_slots(slots_b, enc.shape[1]),
            decoder_task_slots=_slots(slots_b, dec.shape[1]))
  params = _init(cfg, enc, dec, **kw)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32)
                       if trainable.path_name(path).endswith("/b") else x), params)
  return cfg, params, enc, dec, slots_b, kw


def _one_task(params, cfg, slot):
  """Slot `slot`'s LoRA and prompt as a single-task model's parameters."""
  suffix = f"_task{slot}"

  def visit(node):
    if not isinstance(node, dict):
      return node
    out = {}
    for k, v in node.items():
      if k.endswith(suffix):
        out[k[:-len(suffix)]] = visit(v)
      elif "_task" not in k:
        out[k] = visit(v)
    return out
  return cfg.replace(task_slots=(), peft_per_task=False), visit(params)


def test_per_task_lora_and_prompt_give_each_row_its_own_tasks_model():
  cfg, params, enc, dec, slots_b, kw = _per_task_case()
  got = np.asarray(t5.Transformer(cfg).apply({"params": params}, enc, dec, **kw))
  for slot in set(slots_b):
    single_cfg, single = _one_task(params, cfg, slot)
    want = np.asarray(t5.Transformer(single_cfg).apply({"params": single}, enc, dec))
    rows = [i for i, s in enumerate(slots_b) if s == slot]
    scale = np.abs(want[rows]).max()
    # Routed and single-task models sum in other orders; with every projection LoRA'd the
    # model amplifies float32 rounding (a 1e-7 change of the parameters moves the logits by
    # up to 2e-5 of their scale), so 1e-4 of the scale, where the tasks differ by their scale.
    np.testing.assert_allclose(got[rows], want[rows], atol=1e-4 * scale, rtol=0)
  # The tasks really differ (by about the logits' scale).
  assert np.abs(got[0] - np.asarray(t5.Transformer(_one_task(params, cfg, 0)[0]).apply(
      {"params": _one_task(params, cfg, 0)[1]}, enc, dec))[0]).max() > 1.0


def _step_flops(cfg, slots_b):
  enc, dec = _tokens(6, (8, 32)), _tokens(7, (8, 16))
  kw = {}
  if cfg.task_slots:
    kw = dict(encoder_task_slots=_slots(slots_b, 32), decoder_task_slots=_slots(slots_b, 16))
  params = _init(cfg, enc, dec, **kw)
  trained, frozen = trainable.parts(params, peft.trainable_pattern(cfg))

  def loss(trained):
    logits = t5.Transformer(cfg).apply({"params": trainable.union(trained, frozen)}, enc, dec,
                                       **kw)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5])
  cost = jax.jit(jax.grad(loss)).lower(trained).compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


def test_per_task_lora_costs_one_branch():
  """Routing, not running every task's branch: a step of per-task LoRA over 4 tasks
  costs the FLOPs of single-task LoRA (within 1.1x)."""
  single = TINY.replace(lora_rank=8, lora_targets=ALL)
  per_task = single.replace(task_slots=("a", "b", "c", "d"), peft_per_task=True)
  ratio = _step_flops(per_task, [0, 1, 2, 3, 0, 1, 2, 3]) / _step_flops(single, [])
  assert 1.0 <= ratio < 1.1, ratio


def test_frozen_base_gets_no_gradient_and_no_optimizer_state():
  cfg = TINY.replace(lora_rank=4)
  enc, dec = _tokens(8), _tokens(9, (4, 6))
  params = _init(cfg, enc, dec)
  pattern = peft.trainable_pattern(cfg)
  tx = optim.make_optimizer(optim.OptimizerConfig(name="adamw", learning_rate=1e-2,
                                                  trainable=pattern, decay="constant"))
  opt_state = tx.init(params)
  state_leaves = jax.tree.leaves(opt_state)
  lora_params = sum(x.size for x in jax.tree.leaves(trainable.parts(params, pattern)[0]))
  assert sum(x.size for x in state_leaves if x.ndim) == 2 * lora_params  # Adam's mu, nu
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
           "decoder_target_tokens": jnp.roll(dec, -1, 1),
           "decoder_loss_weights": (dec > 0).astype(jnp.float32),
           "encoder_segment_ids": (enc > 0).astype(jnp.int32),
           "decoder_segment_ids": jnp.ones_like(dec), "decoder_task_ids": jnp.zeros_like(dec),
           "encoder_task_ids": jnp.zeros_like(enc)}
  loss, _, grads = train_step.loss_and_grads(
      params, batch, jax.random.key(0), train_step.StepSettings(
          model=t5.Transformer(cfg), loss_cfg=losses.LossConfig(),
          task_weights_k=jnp.ones(1), microbatches=1, trainable_pattern=pattern))
  names = {trainable.path_name(p): g for p, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(not np.any(np.asarray(g)) for n, g in names.items() if "lora_" not in n)
  assert any(np.any(np.asarray(g)) for n, g in names.items() if n.endswith("lora_q/b"))
  updates, _ = tx.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  assert jax.tree.all(jax.tree.map(
      lambda a, b, t: t or bool(jnp.all(a == b)), params, new,
      trainable.mask(params, pattern)))
  assert np.isfinite(float(loss))


def test_prompt_is_prepended_and_initialised_from_common_token_embeddings():
  cfg = TINY.replace(prompt_length=5)
  enc, dec = _tokens(10), _tokens(11, (4, 6))
  params = _init(cfg, enc, dec)
  assert params[peft.PROMPT].shape == (5, TINY.d_model)
  ready = peft.init_prompts(params, cfg, seed=0)
  # Class labels first (each the mean of its tokens' embeddings), then common tokens.
  labelled = peft.init_prompts(params, cfg, seed=0,
                               labels={peft.PROMPT: [np.array([7, 9]), np.array([11])]})
  emb_all = np.asarray(params["token_embedder"])
  np.testing.assert_allclose(np.asarray(labelled[peft.PROMPT][:2]),
                             [(emb_all[7] + emb_all[9]) / 2, emb_all[11]], rtol=1e-6, atol=1e-6)
  for row in np.asarray(labelled[peft.PROMPT][2:]):
    assert np.flatnonzero(np.all(emb_all == row, axis=1)).min() >= peft.PROMPT_VOCAB_IDS[0]
  emb = np.asarray(params["token_embedder"])
  for row in np.asarray(ready[peft.PROMPT]):
    ids = np.flatnonzero(np.all(emb == row, axis=1))
    assert len(ids) == 1 and peft.PROMPT_VOCAB_IDS[0] <= ids[0] < peft.PROMPT_VOCAB_IDS[1]
  encoded = t5.Transformer(cfg).apply({"params": ready}, enc, method="encode")
  assert encoded.shape == (4, 12 + 5, TINY.d_model)
  # The prompt changes what the decoder sees; padding rows still mask their pads.
  plain = t5.Transformer(TINY).apply({"params": task_params.shared_only(ready)}, enc, dec)
  prompted = t5.Transformer(cfg).apply({"params": ready}, enc, dec)
  assert float(jnp.max(jnp.abs(plain - prompted))) > 1e-3


@pytest.mark.parametrize("overrides, message", [
    (dict(lora_rank=4, lora_targets=("q", "value")),
     r"lora_targets entry 'value' is not a projection of this model\. Did you mean v"),
    (dict(lora_rank=4, lora_targets=("wi",)), r"'wi' is not a projection .* wi_0, wi_1, wo"),
    (dict(lora_rank=200, lora_targets=("q",)),
     r"lora_rank=200 exceeds projection 'q''s width \(128 -> 128\); choose a rank <= 128"),
    (dict(lora_rank=-1), r"lora_rank \(-1\) and prompt_length \(0\) must be >= 0"),
    (dict(lora_rank=4, peft_per_task=True), r"need task_slots"),
    (dict(lora_rank=4, task_slots=("a",), task_specific=("encoder.attention",)),
     r"LoRA and task_specific \['encoder.attention'\] both change the projections"),
])
def test_bad_peft_settings_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message) as e:
    TINY.replace(**overrides)
  assert "\n" not in str(e.value)


def test_cached_decoding_of_per_task_lora_and_prompts_equals_recomputing():
  """The decode cache (cross-attention keys through each row's task's LoRA, the prompt's
  positions in the cross mask) gives what recomputing the whole decoder gives."""
  from t5jax.decode import decoding
  cfg, params, enc, _, slots_b, _ = _per_task_case()
  model = t5.Transformer(cfg)
  slots = jnp.asarray(slots_b, jnp.int32)
  cached, _ = decoding.greedy_decode(model, params, enc, 8, task_slots_b=slots)
  uncached = decoding.greedy_decode_uncached(model, params, enc, 8, task_slots_b=slots)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
  assert len({tuple(r) for r in np.asarray(cached).tolist()}) > 1
  beams = decoding.beam_decode(model, params, enc, 8, num_beams=2, task_slots_b=slots)
  assert np.all(np.isfinite(np.asarray(beams.logprob_bk)))
