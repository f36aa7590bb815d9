"""Meshes on 8 fake CPU devices give one device's numbers; shardings follow the rules."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import synthetic
from t5jax.train import losses, optim, step as train_step
from t5jax.parallel import partitioning
from t5jax.model import config as model_config
from t5jax.model import t5

CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, dropout_rate=0.0)
OPT = optim.OptimizerConfig(name="adamw", learning_rate=1e-3, decay_start=0, decay="constant")
LOSS = losses.LossConfig(task_weights={"b": 0.5})
TASKS = ["a", "b"]


def run_steps(mesh, num_steps=3, microbatches=1, batch_size=8, unroll_microbatches=False):
  """Per-step metrics of a few updates, and the first batch's gradients, on `mesh`."""
  model = t5.Transformer(CFG)
  tx = optim.make_optimizer(OPT)
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    settings = train_step.StepSettings(
        model=model, tx=tx, loss_cfg=LOSS, task_weights_k=LOSS.weights_vector(TASKS),
        microbatches=microbatches, unroll_microbatches=unroll_microbatches,
        schedule=optim.learning_rate_schedule(OPT))
    step = train_step.jit_train_step(mesh, shardings, settings)
    grad_fn = jax.jit(functools.partial(train_step.loss_and_grads, settings=settings))
    first = partitioning.host_batch_to_global(synthetic.packed_batch(batch_size, vocab=500), mesh)
    grads = jax.device_get(grad_fn(state.params, first, jax.random.key(0))[2])
    out = []
    for i in range(num_steps):
      batch = synthetic.packed_batch(batch_size=batch_size, vocab=500, seed=i)
      state, m = step(state, partitioning.host_batch_to_global(batch, mesh))
      out.append({k: np.asarray(v) for k, v in m.items()})
  return out, grads


def one_device_mesh():
  return partitioning.make_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def reference():
  return run_steps(one_device_mesh())


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)],
                         ids=["data8", "fsdp8", "dp2_fsdp2_tp2", "fsdp2_tp4"])
def test_meshes_match_one_device(reference, shape):
  ref_metrics, ref_grads = reference
  mesh = partitioning.make_mesh(partitioning.MeshConfig(*shape))
  metrics, grads = run_steps(mesh)
  for ref, got in zip(ref_metrics, metrics):
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=2e-5)
    np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=2e-5)
    np.testing.assert_allclose(got["contribution_k"], ref["contribution_k"], rtol=2e-5, atol=1e-7)
  synthetic.assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize("unroll", [False, True], ids=["loop", "unrolled"])
def test_microbatches_match_one_batch(reference, unroll):
  ref_metrics, ref_grads = reference
  metrics, grads = run_steps(partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=4)),
                             microbatches=2, unroll_microbatches=unroll)
  for ref, got in zip(ref_metrics, metrics):
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=2e-5)
    np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=2e-5)
  synthetic.assert_grads_close(grads, ref_grads)


def test_parameter_shardings_follow_the_rules_table():
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=2, tensor=4))
  model = t5.Transformer(CFG)
  tx = optim.make_optimizer(optim.OptimizerConfig(name="adafactor"))
  shardings = train_step.state_shardings(model, tx, mesh)
  spec = lambda *path: shardings.params[path[0]] if len(path) == 1 else spec_at(shardings.params, path)
  def spec_at(tree, path):
    for p in path:
      tree = tree[p]
    return tree.spec
  p = shardings.params
  assert p["token_embedder"].spec == P("tensor", "fsdp")
  assert spec_at(p, ["encoder", "layers_0", "attention", "query"]) == P("fsdp", "tensor", None)
  assert spec_at(p, ["encoder", "layers_0", "attention", "out"]) == P("tensor", None, "fsdp")
  assert spec_at(p, ["decoder", "layers_1", "mlp", "wi_0"]) == P("fsdp", "tensor")
  assert spec_at(p, ["decoder", "layers_1", "mlp", "wo"]) == P("tensor", "fsdp")
  assert spec_at(p, ["decoder", "logits_dense"]) == P("fsdp", "tensor")
  assert spec_at(p, ["encoder", "encoder_norm", "scale"]) == P("fsdp")
  assert spec_at(p, ["encoder", "relpos_bias", "rel_embedding"]) == P(None, "tensor")
  # A created state really lives in those shardings.
  with partitioning.sharding_context(mesh):
    state, _ = train_step.create_train_state(model, tx, mesh, seed=0)
  q = state.params["encoder"]["layers_0"]["attention"]["query"]
  assert q.sharding.spec == P("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (CFG.d_model // 2, CFG.num_heads // 4, CFG.d_kv)


def test_batch_not_divisible_by_mesh_is_a_clear_error():
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=4))
  with pytest.raises(ValueError, match=r"Batch size 12 .* not divisible by .* 8 devices"):
    partitioning.check_batch_size(12, mesh)


def test_mesh_larger_than_devices_is_a_clear_error():
  with pytest.raises(ValueError, match=r"needs 16 devices but only 8 are available"):
    partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=4))


def test_mesh_with_remaining_devices():
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1, fsdp=1, tensor=2))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
