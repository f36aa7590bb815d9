"""Orbax checkpoints: exact resume after SIGKILL/SIGTERM, corrupt fall-back, NaN
stop, restore onto other meshes and dtypes, fine-tuning, unwritable directories."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hosts
import synthetic
import tiny
from t5jax import checkpoint
from t5jax.train import losses, optim, step as train_step
from t5jax.parallel import partitioning
from t5jax.model import config as model_config
from t5jax.model import t5

FLAGS = tiny.flags("TrainConfig.num_steps=12",
                   "TrainConfig.log_every=1",
                   "CheckpointConfig.every_steps=4",
                   "TrainConfig.num_sample_predictions=0")


# The subprocess runs train on a mixture of UL2 (short denoisers) and English->French, so
# that exact resume covers the keyed UL2 examples too (tests/ul2_kill_tasks.py).
MIXTURE = ["--module=ul2_kill_tasks", "--gin.InputSpec.mixture_or_task='ul2_kill_mix'"]


def start_training(run_dir, *extra):
  cmd = [sys.executable, "-m", "t5jax", "train", f"--run_dir={run_dir}", *FLAGS, *MIXTURE,
         *extra]
  tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, **hosts.compile_cache_env(),
         "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)


def finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def losses_by_step(run_dir):
  """The last logged loss of each step (a resumed run logs some steps twice)."""
  out = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out[record["step"]] = record["loss"]
  return out


def wait_for_step(run_dir, step, proc, timeout=600):
  path = os.path.join(run_dir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    if os.path.exists(path) and max(losses_by_step(run_dir), default=0) >= step:
      return
    time.sleep(0.2)
  raise TimeoutError(f"step {step} never logged")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted 12-step run (checkpoints at 4, 8, 12): its directory and losses."""
  run_dir = str(tmp_path_factory.mktemp("reference"))
  finish(start_training(run_dir))
  return run_dir, losses_by_step(run_dir)


@pytest.fixture(scope="module")
def reference(reference_run):
  return reference_run[1]


def test_sigkill_then_rerun_reproduces_uninterrupted_losses(reference, tmp_path):
  run_dir = str(tmp_path)
  proc = start_training(run_dir)
  wait_for_step(run_dir, 6, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert 4 in checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"),
                                      checkpoint.CheckpointConfig()).steps()
  out = finish(start_training(run_dir))
  assert "Resumed from step" in out
  resumed = losses_by_step(run_dir)
  assert sorted(resumed) == list(range(1, 13))
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    assert "tasks/text_ul2_short/loss" in f.readline()  # UL2 examples were in the batches
  for step in range(1, 13):
    assert resumed[step] == reference[step], (step, resumed[step], reference[step])


def test_sigterm_saves_and_exits_cleanly_then_resumes(reference, tmp_path):
  run_dir = str(tmp_path)
  proc = start_training(run_dir)
  wait_for_step(run_dir, 5, proc)
  proc.send_signal(signal.SIGTERM)
  out = finish(proc)
  assert "SIGTERM received: saved step" in out
  saved = checkpoint.latest_step(run_dir)
  assert saved >= 5
  out = finish(start_training(run_dir))
  assert f"Resumed from step {saved}" in out
  resumed = losses_by_step(run_dir)
  for step in range(1, 13):
    assert resumed[step] == reference[step], step

  # Other data settings: refused in one line naming the change, nothing set aside...
  before = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
  proc = start_training(run_dir, "--gin.InputSpec.seed=1", "--gin.TrainConfig.num_steps=13")
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode != 0
  assert "Traceback" not in out
  error = [line for line in out.splitlines() if "other data settings" in line]
  assert len(error) == 1 and "seed 0 -> 1" in error[0] and "data_restart=True" in error[0], out
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == before
  # ...unless asked to restart the data stream, which keeps the model and goes on.
  out = finish(start_training(run_dir, "--gin.InputSpec.seed=1", "--gin.TrainConfig.num_steps=13",
                              "--gin.CheckpointConfig.data_restart=True"))
  assert "Data settings changed since step 12 (seed 0 -> 1)" in out
  assert "Resumed from step 12" in out and 13 in losses_by_step(run_dir)


def test_corrupt_latest_checkpoint_falls_back_to_previous(reference_run, tmp_path):
  # A copy of the finished reference run, whose checkpoint 12 is then damaged.
  run_dir = str(tmp_path / "run")
  shutil.copytree(reference_run[0], run_dir)
  reference = reference_run[1]
  assert checkpoint.latest_step(run_dir) == 12
  # Damage every data file of the latest checkpoint's parameters.
  for root, _, files in os.walk(os.path.join(run_dir, "checkpoints", "12", "params")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        size = f.seek(0, 2)
        f.seek(0)
        f.write(b"\0garbage" * max(1, size // 8))
  out = finish(start_training(run_dir))
  assert "checkpoint at step 12 is unreadable" in out
  assert "Resumed from step 8" in out
  # Nothing is deleted: the damaged step is kept aside, and step 12 was saved anew.
  assert any(n.startswith("12.unreadable-") for n in os.listdir(os.path.join(run_dir, "checkpoints")))
  assert checkpoint.latest_step(run_dir) == 12
  resumed = losses_by_step(run_dir)
  for step in range(9, 13):
    assert resumed[step] == reference[step], step


CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=512)


def _trained_state(mesh):
  model = t5.Transformer(CFG)
  tx = optim.make_optimizer(optim.OptimizerConfig())
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.jit_train_step(
        mesh, shardings, train_step.StepSettings(
            model=model, tx=tx, loss_cfg=losses.LossConfig(), task_weights_k=jnp.ones(2),
            microbatches=1, schedule=optim.learning_rate_schedule(optim.OptimizerConfig())))
    state, _ = step(state, partitioning.host_batch_to_global(synthetic.packed_batch(8), mesh))
  return model, tx, state


def test_restore_onto_other_meshes_and_dtypes(tmp_path):
  fsdp8 = partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=8))
  model, tx, state = _trained_state(fsdp8)
  ckpt = checkpoint.Checkpointer(str(tmp_path), checkpoint.CheckpointConfig(async_save=False))
  ckpt.save(state, {"model_config": {}})
  ckpt.close()
  expected = jax.device_get(state)

  one = partitioning.make_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
  tp4 = partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=1, tensor=4),
                               devices=jax.devices()[:4])
  for mesh in (one, tp4):
    shardings = train_step.state_shardings(model, tx, mesh)
    abstract = train_step.abstract_train_state(model, tx)
    restored, meta, _ = checkpoint.Checkpointer(str(tmp_path), checkpoint.CheckpointConfig()
                                             ).restore_latest(abstract, shardings)
    assert meta["step"] == 1
    q = restored.params["encoder"]["layers_0"]["attention"]["query"]
    assert q.sharding == shardings.params["encoder"]["layers_0"]["attention"]["query"]
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)

  # Parameters only, into bfloat16, e.g. for inference.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16),
                          train_step.abstract_train_state(model, tx).params)
  params = checkpoint.load_params(str(tmp_path), abstract)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected.params)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(jnp.bfloat16))


def test_unwritable_checkpoint_directory_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match="is not writable"):
    checkpoint.Checkpointer(str(blocker / "checkpoints"), checkpoint.CheckpointConfig())


def test_nan_loss_stops_naming_the_step_and_keeps_last_good(tmp_path):
  from t5jax import config as gin_config
  from t5jax.train import loop, run_config
  run_dir = str(tmp_path)
  gin_config.parse_gin(["runs/demo.gin"], [f[len("--gin."):] for f in FLAGS] + [
      "TrainConfig.num_steps=5", "CheckpointConfig.every_steps=5"])
  loop.train(run_dir, run_config.TrainConfig())
  # Resume with a NaN task weight: step 6 is the first step whose loss is NaN.
  gin_config.parse_gin(["runs/demo.gin"], [f[len("--gin."):] for f in FLAGS] + [
      "TrainConfig.num_steps=9"])
  config = run_config.TrainConfig()
  import dataclasses
  config = dataclasses.replace(config, loss=losses.LossConfig(
      task_weights={"multi30k_en_fr": float("nan")}))
  with pytest.raises(FloatingPointError, match=r"at step 6; the last good checkpoint is step 5"):
    loop.train(run_dir, config)
  assert checkpoint.latest_step(run_dir) == 5


def test_fine_tuning_starts_from_another_runs_parameters(tmp_path):
  from t5jax import config as gin_config
  from t5jax.train import loop, run_config
  base = [f[len("--gin."):] for f in FLAGS]
  gin_config.parse_gin(["runs/demo.gin"], base + [
      "TrainConfig.num_steps=10", "OptimizerConfig.warmup_steps=0"])
  pretrained = loop.train(str(tmp_path / "pretrain"), run_config.TrainConfig())
  gin_config.parse_gin(["runs/finetune.gin"], base + [
      "TrainConfig.num_steps=2", f"CheckpointConfig.init_from='{tmp_path / 'pretrain'}'"])
  finetuned = loop.train(str(tmp_path / "finetune"), run_config.TrainConfig())
  # A fresh optimizer and step counter, but the pretrained weights: the first
  # fine-tuning loss continues from where pretraining ended, far below a fresh start.
  assert [s["step"] for s in finetuned] == [1, 2]
  assert finetuned[0]["loss"] < pretrained[0]["loss"] - 1.0
  assert abs(finetuned[0]["loss"] - pretrained[-1]["loss"]) < 1.0
  assert checkpoint.latest_step(str(tmp_path / "finetune")) == 2
