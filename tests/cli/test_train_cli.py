"""End to end: gin files, the `t5jax` CLI on the shipped data, overfitting, errors."""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny

from t5jax.cli import main as cli
from t5jax.train import losses, optim, step as train_step
from t5jax.parallel import partitioning
from t5jax import config as gin_config
from t5jax.data import pipeline
from t5jax.model import config as model_config
from t5jax.model import t5
from t5jax.train import run_config

GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin_configs"
GIN_FILES = sorted(str(p.relative_to(GIN_DIR)) for p in GIN_DIR.rglob("*.gin"))


@pytest.fixture(scope="module")
def busy_cwd(tmp_path_factory):
  """A working directory like a user's after `make demo`: a runs/ of runs (also a
  namespace package, as the cwd is on sys.path) and files named like shipped ones."""
  root = tmp_path_factory.mktemp("busy_cwd")
  (root / "runs" / "demo" / "checkpoints").mkdir(parents=True)
  (root / "models").mkdir()
  for name in ("runs/demo.gin", "runs/finetune.gin", "models/t5_1_0_tiny.gin"):
    (root / name).write_text("this is not gin (\n")
  return root


@pytest.mark.parametrize("name", GIN_FILES)
def test_every_gin_file_parses_and_builds_its_model(name, busy_cwd, monkeypatch):
  # Shipped files resolve to themselves whatever the working directory holds.
  monkeypatch.chdir(busy_cwd)
  monkeypatch.syspath_prepend(str(busy_cwd))
  gin_config.parse_gin([name], [])
  config = run_config.TrainConfig()
  model = t5.Transformer(config.model_config())
  tokens = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))  # no memory
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) > 0
  if config.mesh.slices > 1:  # needs several processes or TPU slices; one process says so
    with pytest.raises(ValueError, match=r"slices=2 needs .* in 2 processes, but they are in 1"):
      partitioning.make_mesh(config.mesh)
  else:
    partitioning.make_mesh(config.mesh)  # every mesh preset fits the 8 test devices
  assert pipeline.task_names(config.data.mixture_or_task)


# The model fields each run file binds, counting what it includes (the others: none).
RUN_MODEL_SETTINGS = {
    "runs/demo.gin": {"dtype": "float32", "dropout_rate": 0.0},
    "runs/finetune.gin": {"dtype": "float32", "dropout_rate": 0.1},
    "experiments/supervised_base.gin": {"dtype": "float32", "dropout_rate": 0.0},
}


@pytest.mark.parametrize("name", [n for n in GIN_FILES if not n.startswith("recipes/")])
def test_each_gin_file_binds_only_the_model_fields_it_chooses(name):
  # (The recipes: tests/train/test_fit_search.py, against the setting --fit chose.)
  gin_config.parse_gin([name], [])
  config = run_config.TrainConfig()
  assert config.model_settings.changes() == RUN_MODEL_SETTINGS.get(name, {})
  assert config.model_overrides == {}


def _model(gin_files, bindings):
  gin_config.parse_gin(gin_files, bindings)
  return run_config.TrainConfig().model_config()


def test_a_later_binding_changes_one_model_field_and_keeps_the_others():
  cfg = _model(["runs/finetune.gin"], ["ModelSettings.remat_policy='full'"])
  assert (cfg.remat_policy, cfg.dtype, cfg.dropout_rate) == ("full", "float32", 0.1)
  # A later gin file: the XL fine-tuning recipe's bfloat16 over runs/finetune.gin's float32,
  # its dropout kept; a flag after it changes the dropout alone.
  cfg = _model(["recipes/v5p-8/t5_1_1_xl_finetune.gin"], [])
  assert (cfg.dtype, cfg.dropout_rate, cfg.d_model) == ("bfloat16", 0.1, 2048)
  cfg = _model(["recipes/v5p-8/t5_1_1_xl_finetune.gin"], ["ModelSettings.dropout_rate=0.2"])
  assert (cfg.dtype, cfg.dropout_rate) == ("bfloat16", 0.2)
  # A tuple field, and the whole-dict form, which still works and comes after the fields.
  cfg = _model(["runs/demo.gin"], ["ModelSettings.task_slots=['multi30k_en_fr']",
                                   "ModelSettings.remat_policy='full'",
                                   "TrainConfig.model_overrides={'remat_policy': 'minimal'}"])
  assert (cfg.task_slots, cfg.remat_policy, cfg.dtype) == (("multi30k_en_fr",), "minimal",
                                                            "float32")


FAST = tiny.flags("TrainConfig.log_every=5",
                  "CheckpointConfig.every_steps=0")


def test_cli_trains_on_shipped_data_and_writes_logs(tmp_path, capsys):
  run_dir = tmp_path / "run"
  code = cli.main(["train", f"--run_dir={run_dir}", "--gin.TrainConfig.num_steps=40",
                   "--gin.TrainConfig.num_sample_predictions=2", *FAST])
  assert code == 0
  out = capsys.readouterr().out
  assert "ETA" in out and "multi30k_en_fr=" in out
  records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
  assert records[-1]["loss"] < records[0]["loss"] - 2.0
  assert {"tasks/multi30k_en_fr/loss", "tasks/multi30k_en_de/accuracy",
          "target_tokens_per_s", "learning_rate", "grad_norm"} <= set(records[-1])
  assert list((run_dir / "tb").glob("events.out.tfevents.*"))
  predictions = [json.loads(l) for l in (run_dir / "predictions.jsonl").read_text().splitlines()]
  assert len(predictions) == 2 and predictions[0]["inputs"].startswith("translate English to")
  assert (run_dir / "config.gin").read_text().count("TrainConfig.num_steps = 40") == 1
  assert checkpoint_steps(run_dir) == [40]


def checkpoint_steps(run_dir):
  return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_overfits_one_fixed_batch_to_near_zero_loss():
  spec = pipeline.InputSpec("multi30k_mix", inputs_length=32, targets_length=32)
  batch = next(pipeline.make_batches(spec, 8))
  cfg = model_config.get_config("t5_1_1_tiny", dtype="float32")
  model = t5.Transformer(cfg)
  opt = optim.OptimizerConfig(name="adamw", learning_rate=3e-3, decay="constant", decay_start=0)
  tx = optim.make_optimizer(opt)
  # One device: what is tested is learning, not sharding (8 CPU "devices" of 1 row
  # each on 2 cores made the step 5x slower).
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1))
  loss_cfg = losses.LossConfig(z_loss=0.0)
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.jit_train_step(
        mesh, shardings, train_step.StepSettings(
            model=model, tx=tx, loss_cfg=loss_cfg, task_weights_k=jnp.ones(2),
            microbatches=1, schedule=optim.learning_rate_schedule(opt)))
    global_batch = partitioning.host_batch_to_global(batch, mesh)
    history = []
    for _ in range(150):
      state, m = step(state, global_batch)
      history.append(float(m["loss"]))
  assert history[0] > 9.0
  assert history[-1] < 0.05, history[-10:]
  assert float(m["accuracy"]) == 1.0


def run_cli(args, capsys):
  code = cli.main(args)
  err = capsys.readouterr().err.strip()
  return code, err


@pytest.mark.parametrize("flag, message", [
    ("--gin_file=runs/demoo.gin", "Gin file 'runs/demoo.gin' not found"),
    ("--gin.TrainConfig.num_stepz=3", "Bad gin binding 'TrainConfig.num_stepz=3'"),
    ("--gin.NoSuchThing.x=3", "Bad gin binding 'NoSuchThing.x=3'"),
    ("--gin.TrainConfig.batch_size=12", "Batch size 12 "),
    ("--gin.MeshConfig.data=16", "needs 16 devices but only 8 are available"),
    ("--gin.InputSpec.mixture_or_task='multi30k_en_frr'", "multi30k_en_fr"),
    ("--gin.ModelSettings.remat_polcy='full'", "named 'remat_polcy'. Did you mean remat_policy?"),
    ("--gin.ModelSettings.dropout_rate='high'", "ModelSettings.dropout_rate='high' is a str, not a float"),
    ("--gin.ModelSettings.remat_policy='fulll'", "remat_policy='fulll' is not one of"),
    ("--gin.TrainConfig.model_overrides={'dtyp': 'float32'}",
     "TrainConfig.model_overrides has no field 'dtyp'. Did you mean dtype?"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, flag, message):
  code, err = run_cli(["train", f"--run_dir={tmp_path}", flag], capsys)
  assert code == 2
  assert message in err
  assert len(err.splitlines()) == 1, err


USER_MODULE = '''
from t5jax.data import user_tasks
user_tasks.register_tsv_task(
    "my_reverse", {"train": %r, "validation": %r}, prefix="reverse: ")
'''


def test_user_task_module_trains_through_the_cli(tmp_path, capsys, monkeypatch):
  rows = [f"{a} {b} {c}\t{c} {b} {a}" for a, b, c in
          zip(["red", "blue", "green", "small", "big"] * 8, ["cat", "dog", "bird", "fish"] * 10,
              ["runs", "sleeps", "eats", "sings", "jumps"] * 8)]
  (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
  (tmp_path / "dev.tsv").write_text("\n".join(rows[:6]) + "\n")
  (tmp_path / "my_tasks.py").write_text(
      USER_MODULE % (str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv")))
  monkeypatch.chdir(tmp_path)
  code = cli.main(["train", "--module=my_tasks", f"--run_dir={tmp_path / 'run'}",
                   "--gin.InputSpec.mixture_or_task='my_reverse'",
                   "--gin.TrainConfig.num_steps=10", "--gin.TrainConfig.num_sample_predictions=1",
                   *FAST])
  assert code == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  assert "['my_reverse']" in out and "reverse: " in out


def test_compile_reports_per_device_memory_and_flops(capsys, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", ""))
  code = cli.main(["compile", "--devices=8", "--gin_file=runs/demo.gin",
                   "--gin_file=models/t5_1_1_small.gin", "--gin_file=mesh/fsdp.gin",
                   "--gin.ModelSettings.scan_layers=True"])
  assert code == 0
  out = capsys.readouterr().out
  report = json.loads(out.strip().splitlines()[-1])
  assert report["parameters"] == 76_961_152 and report["devices"] == 8
  assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  # FSDP over 8: each device holds an eighth of the fp32 parameters (and more for the
  # optimizer and the batch shard), far less than the whole model.
  assert 76_961_152 * 4 / 8 < report["argument_size_in_bytes"] < 76_961_152 * 4 / 2
  assert report["peak_bytes_per_device"] > report["argument_size_in_bytes"]
  assert report["model_flops_per_device"] > 0
  assert "per device: arguments" in out


def test_compile_decode_reports_what_an_evaluation_batch_needs(capsys, monkeypatch):
  """t5jax compile --decode: the parameters' shards (halved in bfloat16), and a beam
  search's temporaries (4 beams' KV cache) above greedy decoding's (on 8 CPU devices the
  all-gathered parameters dominate both)."""
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", ""))
  reports = {}
  for name, extra in (("greedy", []), ("beam", ["--gin.DecodeConfig.method='beam'"]),
                      ("bf16", ["--gin.ModelSettings.param_dtype='bfloat16'"])):
    code = cli.main(["compile", "--decode", "--devices=8", "--gin_file=runs/demo.gin",
                     "--gin_file=mesh/fsdp.gin", "--gin.EvalConfig.batch_size=16",
                     "--gin.EvalConfig.inputs_length=64", "--gin.EvalConfig.targets_length=32",
                     *extra])
    out = capsys.readouterr().out
    assert code == 0
    reports[name] = json.loads(out.strip().splitlines()[-1])
    assert "per device: parameters" in out
  greedy = reports["greedy"]
  assert greedy["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and greedy["batch"] == 16
  # FSDP: an eighth of the float32 parameters on each device (the embedding rows padded).
  assert greedy["parameters"] * 4 / 8 <= greedy["parameter_bytes_per_device"] \
      < greedy["parameters"] * 4 / 7
  assert reports["bf16"]["parameter_bytes_per_device"] == pytest.approx(
      greedy["parameter_bytes_per_device"] / 2, rel=0.01)
  assert reports["beam"]["temp_size_in_bytes"] > greedy["temp_size_in_bytes"]


def test_task_losses_add_up_in_a_real_packed_mixed_batch():
  """On a packed multi30k_mix batch, each row mixes tasks; the weighted per-task
  contributions still add up to the loss, for every normalisation."""
  spec = pipeline.InputSpec("multi30k_mix", inputs_length=64, targets_length=64)
  batch = next(pipeline.make_batches(spec, 4))
  mixed_rows = [r for r in range(4) if len(set(batch["decoder_task_ids"][r][
      batch["decoder_loss_weights"][r] > 0])) > 1]
  assert mixed_rows, "expected at least one row packing both tasks"
  cfg = model_config.get_config("t5_1_0_tiny", dtype="float32")
  model = t5.Transformer(cfg)
  params = model.init(jax.random.key(0), batch["encoder_input_tokens"][:1],
                      batch["decoder_input_tokens"][:1])["params"]
  logits = model.apply(params if "params" in params else {"params": params},
                       batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                       batch["encoder_segment_ids"], batch["decoder_segment_ids"])
  weights_k = jnp.asarray([0.5, 2.0])
  for normalization in ("tokens", "per_task"):
    loss_cfg = losses.LossConfig(normalization=normalization)
    scale = losses.token_scales(batch["decoder_loss_weights"], batch["decoder_task_ids"],
                                weights_k, normalization)
    loss, stats = losses.loss_and_stats(logits, batch, scale, 2, loss_cfg)
    np.testing.assert_allclose(float(jnp.sum(stats["contribution_k"])), float(loss), rtol=1e-6)
    assert np.all(np.asarray(stats["tokens_k"]) > 0)


def test_compile_t5_1_1_xl_for_a_64_device_mesh_on_this_host():
  """The planning use case: an XL train step for 64 devices, compiled on a CPU host."""
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "-m", "t5jax", "compile", "--devices=64",
       "--gin_file=runs/pretrain.gin", "--gin_file=models/t5_1_1_xl.gin",
       "--gin.MeshConfig.data=1", "--gin.MeshConfig.fsdp=16", "--gin.MeshConfig.tensor=4",
       "--gin.ModelSettings.scan_layers=True", "--gin.ModelSettings.remat_policy='full'",
       "--gin.ModelSettings.dtype='bfloat16'", "--gin.TrainConfig.batch_size=256"],
      env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["parameters"] == 2_849_757_184 and report["devices"] == 64
  # fp32 parameters alone are 11.4 GB; sharded 64 ways each device holds a 64th (+ state).
  assert 2_849_757_184 * 4 / 64 < report["argument_size_in_bytes"] < 2_849_757_184 * 4 / 16
  assert "per device: arguments" in proc.stdout
