"""Soft parameter sharing and task adapters: routing, gradients, penalty, decoding, export."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import synthetic
from t5jax.decode import decoding
from t5jax.train import losses, optim, step as train_step
from t5jax.parallel import partitioning
from t5jax.model import config as model_config
from t5jax.model import t5, task_params

SLOTS = ("a", "b", "c")
BASE = dict(dtype="float32", vocab_size=512, dropout_rate=0.0)
SOFT = dict(BASE, task_slots=SLOTS, task_specific=("decoder.layer", "encoder.mlp"))
ADAPTERS = dict(BASE, task_slots=SLOTS, adapter_dim=8)


def _config(size="t5_1_1_tiny", **fields):
  return model_config.get_config(size, **fields)


def _init(cfg, seed=0):
  """Parameters as training creates them (copies equal to their anchors)."""
  tx = optax.sgd(0.1)
  return train_step.make_init_fn(t5.Transformer(cfg), tx)(jax.random.key(seed)).params


def _slots(batch):
  return {"encoder_task_slots": batch["encoder_task_ids"],
          "decoder_task_slots": batch["decoder_task_ids"]}


def _logits(cfg, params, batch, **slots):
  return t5.Transformer(cfg).apply(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch["encoder_segment_ids"], batch["decoder_segment_ids"], **slots)


def _perturb_copies(params, scale=0.05, seed=1):
  """Moves every task copy and adapter away from its initial value."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, x), key in zip(leaves, keys):
    names = [getattr(p, "key", "") for p in path]
    routed = any("_task" in n for n in names)
    out.append(x + scale * jax.random.normal(key, x.shape) if routed else x)
  return jax.tree_util.tree_unflatten(tree, out)


@pytest.mark.parametrize("fields", [SOFT, ADAPTERS, dict(SOFT, scan_layers=True)],
                         ids=["soft", "adapters", "soft_scanned"])
def test_at_initialisation_the_model_computes_exactly_the_hard_shared_model(fields):
  soft_cfg = _config(**fields)
  params = _init(soft_cfg)
  batch = synthetic.packed_batch(batch_size=4, num_tasks=3)
  hard_cfg = soft_cfg.replace(task_slots=(), task_specific=(), adapter_dim=0)
  hard = _logits(hard_cfg, task_params.shared_only(params), batch)
  soft = _logits(soft_cfg, params, batch, **_slots(batch))
  # Equal up to fp32 rounding: the routed blocks sum the same products as one
  # matmul, in a batched matmul's order.
  synthetic.assert_close(soft, hard)
  assert float(task_params.soft_sharing_penalty(params)) == 0.0


def test_each_token_gets_exactly_its_own_task_copy():
  """A mixed packed batch equals, token for token, the plain model built from the
  token's task copy (what `convert --to_hf --task` exports)."""
  cfg = _config(**SOFT)
  params = _perturb_copies(_init(cfg))
  batch = synthetic.packed_batch(batch_size=4, num_tasks=3)
  mixed = np.asarray(_logits(cfg, params, batch, **_slots(batch)))
  dec_tasks = batch["decoder_task_ids"]
  assert len(set(dec_tasks[batch["decoder_loss_weights"] > 0])) == 3
  for k, name in enumerate(SLOTS):
    plain_cfg, plain = task_params.for_task(params, cfg, name)
    alone = np.asarray(_logits(plain_cfg, plain, batch))
    mine = (dec_tasks == k) & (batch["decoder_loss_weights"] > 0)
    synthetic.assert_close(mixed[mine], alone[mine])
    assert not np.allclose(mixed[~mine & (batch["decoder_loss_weights"] > 0)],
                           alone[~mine & (batch["decoder_loss_weights"] > 0)], atol=1e-3)


def _loss_grads(cfg, params, batch):
  model = t5.Transformer(cfg)
  loss_cfg = losses.LossConfig(z_loss=0.0)
  return train_step.loss_and_grads(
      params, batch, jax.random.key(0), train_step.StepSettings(
          model=model, loss_cfg=loss_cfg, task_weights_k=jnp.ones((3,)), microbatches=1,
          slot_of_task_k=jnp.arange(3, dtype=jnp.int32)))[2]


def _norm(tree):
  return float(optax.tree.norm(tree))


@pytest.mark.parametrize("fields", [SOFT, ADAPTERS], ids=["soft", "adapters"])
def test_an_examples_gradient_reaches_only_its_tasks_copy(fields):
  cfg = _config(**fields)
  params = _perturb_copies(_init(cfg))
  batch = synthetic.packed_batch(batch_size=4, num_tasks=3)
  # Only task 1's target tokens count in the loss.
  batch["decoder_loss_weights"] = (batch["decoder_loss_weights"]
                                   * (batch["decoder_task_ids"] == 1)).astype(np.int32)
  grads = _loss_grads(cfg, params, batch)
  dec = grads["decoder"]["layers_0"]
  name = "mlp" if fields is SOFT else "adapter"
  assert _norm(dec[f"{name}_task1"]) > 0
  assert _norm(dec[f"{name}_task0"]) == 0.0 and _norm(dec[f"{name}_task2"]) == 0.0
  enc = grads["encoder"]["layers_1"]
  assert _norm(enc[f"{name}_task1"]) > 0 and _norm(enc[f"{name}_task0"]) == 0.0
  if fields is SOFT:
    # The shared anchor is not in the forward pass: only the penalty moves it.
    assert _norm(dec["mlp"]) == 0.0 and _norm(dec["self_attention"]) == 0.0
    assert _norm(dec["self_attention_task1"]) > 0
    assert _norm(dec["self_attention_task2"]) == 0.0


def _step(cfg, loss_cfg, state, batch, tx):
  model = t5.Transformer(cfg)
  return train_step.train_step(
      state, batch, train_step.StepSettings(
          model=model, tx=tx, loss_cfg=loss_cfg, task_weights_k=jnp.ones((3,)),
          microbatches=1, schedule=lambda s: 0.0,
          slot_of_task_k=jnp.arange(3, dtype=jnp.int32)))


def test_without_the_penalty_task_copies_train_independently():
  """lambda = 0: a task's copy after a step (Adafactor, T5's settings) does not
  depend on the other tasks' examples, and the anchor never moves. (Global-norm
  clipping, which scales every gradient by one number, is off: it would couple them.)"""
  cfg = _config(**SOFT)
  tx = optim.make_optimizer(optim.OptimizerConfig(learning_rate=0.01, decay_start=0,
                                                  decay="constant", clip_grad_norm=0.0))
  loss_cfg = losses.LossConfig(soft_sharing_l2=0.0, z_loss=0.0)
  state = train_step.make_init_fn(t5.Transformer(cfg), tx)(jax.random.key(0))
  batch = synthetic.packed_batch(batch_size=4, num_tasks=3)
  other = dict(batch)
  # Task 2's examples replaced by other tokens at the same places.
  rng = np.random.default_rng(5)
  for key in ("encoder_input_tokens", "decoder_target_tokens"):
    prefix = key.split("_")[0]
    where = (batch[f"{prefix}_task_ids"] == 2) & (batch[key] > 0)
    other[key] = np.where(where, rng.integers(2, 500, batch[key].shape), batch[key]).astype(np.int32)
  other["decoder_input_tokens"] = np.where(
      batch["decoder_input_tokens"] > 0,
      np.concatenate([np.zeros_like(other["decoder_target_tokens"][:, :1]),
                      other["decoder_target_tokens"][:, :-1]], axis=1), 0).astype(np.int32)
  first = jax.tree.map(np.asarray, _step(cfg, loss_cfg, state, batch, tx)[0].params)
  second = jax.tree.map(np.asarray, _step(cfg, loss_cfg, state, other, tx)[0].params)
  layer_1, layer_2 = first["decoder"]["layers_1"], second["decoder"]["layers_1"]
  for k in (0, 1):
    jax.tree.map(np.testing.assert_array_equal, layer_1[f"mlp_task{k}"], layer_2[f"mlp_task{k}"])
  assert not np.array_equal(layer_1["mlp_task2"]["wo"], layer_2["mlp_task2"]["wo"])
  start = jax.tree.map(np.asarray, state.params)["decoder"]["layers_1"]["mlp"]
  jax.tree.map(np.testing.assert_array_equal, layer_1["mlp"], start)


def test_the_penalty_is_lambda_times_the_squared_distances_and_pulls_copies_together():
  cfg = _config(**dict(BASE, task_slots=SLOTS, task_specific=("decoder.mlp",)))
  params = _perturb_copies(_init(cfg))
  expected = 0.0
  for i in range(cfg.num_decoder_layers):
    layer = params["decoder"][f"layers_{i}"]
    for k in range(3):
      for w in layer["mlp"]:
        expected += float(np.sum((np.asarray(layer[f"mlp_task{k}"][w], np.float64)
                                  - np.asarray(layer["mlp"][w], np.float64))**2))
  assert float(task_params.soft_sharing_penalty(params)) == pytest.approx(expected, rel=1e-5)

  lam = 0.3
  tx = optax.sgd(1.0)
  state = train_step.make_init_fn(t5.Transformer(cfg), tx)(jax.random.key(0))
  state = state.replace(params=params, opt_state=tx.init(params))
  batch = synthetic.packed_batch(batch_size=4, num_tasks=3)
  with_pen = _step(cfg, losses.LossConfig(soft_sharing_l2=lam, z_loss=0.0), state, batch, tx)
  without = _step(cfg, losses.LossConfig(soft_sharing_l2=0.0, z_loss=0.0), state, batch, tx)
  assert float(with_pen[1]["soft_sharing_penalty"]) == pytest.approx(lam * expected, rel=1e-5)
  assert float(with_pen[1]["loss"] - without[1]["loss"]) == pytest.approx(lam * expected,
                                                                          rel=1e-4)
  # SGD at rate 1: the penalty's part of the update is -2 lambda (theta_t - theta_shared)
  # for a copy and +2 lambda sum_t (theta_t - theta_shared) for the anchor.
  layer = params["decoder"]["layers_0"]
  delta = lambda s: np.asarray(s[0].params["decoder"]["layers_0"]["mlp_task1"]["wo"])
  np.testing.assert_allclose(
      delta(with_pen) - delta(without),
      -2 * lam * (np.asarray(layer["mlp_task1"]["wo"]) - np.asarray(layer["mlp"]["wo"])),
      rtol=1e-4, atol=1e-6)
  anchor = lambda s: np.asarray(s[0].params["decoder"]["layers_0"]["mlp"]["wo"])
  pull = sum(np.asarray(layer[f"mlp_task{k}"]["wo"]) - np.asarray(layer["mlp"]["wo"])
             for k in range(3))
  np.testing.assert_allclose(anchor(with_pen) - anchor(without), 2 * lam * pull,
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fields", [SOFT, ADAPTERS], ids=["soft", "adapters"])
def test_decoding_uses_each_rows_task(fields):
  cfg = _config(**fields)
  params = _perturb_copies(_init(cfg), scale=0.5)
  model = t5.Transformer(cfg)
  tokens = synthetic.packed_batch(batch_size=3, num_tasks=3)["encoder_input_tokens"]
  tokens = np.where(tokens > 0, tokens, 0)
  slots = np.array([0, 1, 2], np.int32)
  cached, _ = decoding.greedy_decode(model, params, tokens, 12, slots)
  reference = decoding.greedy_decode_uncached(model, params, tokens, 12, slots)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(reference))
  # Row r decoded alone with the plain model of its task gives the same tokens.
  if fields is SOFT:
    for r, name in enumerate(SLOTS):
      plain_cfg, plain = task_params.for_task(params, cfg, name)
      alone, _ = decoding.greedy_decode(t5.Transformer(plain_cfg), plain, tokens[r:r + 1], 12)
      np.testing.assert_array_equal(np.asarray(alone)[0], np.asarray(cached)[r])
  # Beam search keeps each row's task through the beams' reordering.
  beams = decoding.beam_decode(model, params, tokens, 12, num_beams=3, task_slots_b=slots)
  for r in range(3):
    one = decoding.beam_decode(model, params, tokens[r:r + 1], 12, num_beams=3,
                               task_slots_b=slots[r:r + 1])
    np.testing.assert_array_equal(np.asarray(beams.seqs_bkl)[r], np.asarray(one.seqs_bkl)[0])


def test_mesh_sharding_of_a_soft_shared_model_matches_one_device():
  cfg = _config(**dict(SOFT, task_specific=("decoder.mlp", "encoder.attention"), adapter_dim=8))
  model = t5.Transformer(cfg)
  tx = optim.make_optimizer(optim.OptimizerConfig(name="adamw", learning_rate=1e-3,
                                                  decay_start=0, decay="constant"))
  loss_cfg = losses.LossConfig(soft_sharing_l2=0.1)
  results = []
  for mesh in (partitioning.make_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1]),
               partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))):
    with partitioning.sharding_context(mesh):
      state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
      step = train_step.jit_train_step(
          mesh, shardings, train_step.StepSettings(
              model=model, tx=tx, loss_cfg=loss_cfg, task_weights_k=jnp.ones((3,)),
              microbatches=1, schedule=lambda s: 0.0,
              slot_of_task_k=jnp.arange(3, dtype=jnp.int32)))
      losses_seen = []
      for i in range(3):
        batch = synthetic.packed_batch(batch_size=8, num_tasks=3, seed=i)
        state, m = step(state, partitioning.host_batch_to_global(batch, mesh))
        losses_seen.append((float(m["loss"]), float(m["soft_sharing_distance"])))
    results.append(losses_seen)
  np.testing.assert_allclose(results[1], results[0], rtol=2e-5)
  assert results[0][0][1] == 0.0 and results[0][2][1] > 0.0


@pytest.mark.parametrize("fields, message", [
    (dict(task_slots=("a",), task_specific=("decoder.mpl",)), "Did you mean decoder.mlp"),
    (dict(task_specific=("decoder.mlp",)), "need task_slots"),
    (dict(task_slots=("a(",), adapter_dim=4), "not a valid regular expression"),
])
def test_bad_task_parameter_configs_are_one_line_errors(fields, message):
  with pytest.raises(ValueError, match=message) as e:
    _config(**BASE, **fields)
  assert "\n" not in str(e.value)


def test_tasks_map_to_slots_by_name_or_pattern():
  cfg = _config(**dict(BASE, task_slots=("glue_.*", "multi30k_en_fr", ".*"), adapter_dim=4))
  assert [cfg.slot_of_task(t) for t in ("glue_cola", "multi30k_en_fr", "scitldr")] == [0, 1, 2]
  narrow = cfg.replace(task_slots=("glue_.*",))
  with pytest.raises(ValueError, match="matches none of the model's task_slots"):
    narrow.slot_of_task("scitldr")
  with pytest.raises(ValueError, match="adapters"):
    task_params.for_task({}, cfg, "glue_cola")


def test_trainable_freezes_every_other_parameter():
  cfg = _config(**ADAPTERS)
  params = _init(cfg)
  tx = optim.make_optimizer(optim.OptimizerConfig(trainable="adapter_task1"))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  for path, u in flat:
    moved = "adapter_task1" in jax.tree_util.keystr(path)
    assert (float(jnp.abs(u).max()) > 0) == moved, jax.tree_util.keystr(path)
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.make_optimizer(optim.OptimizerConfig(trainable="adaptor")).init(params)
