"""LoRA and prompt-tuning runs end to end: from a base run, with checkpoints that hold
only the trained parameters (plus a pinned reference to the base) and resume exactly;
prompt tuning's row and length checks."""
import json
import os

import numpy as np
import pytest

import tiny

from t5jax import checkpoint
from t5jax import config as gin_config
from t5jax.train import loop, run_config

FLAGS = tiny.bindings("TrainConfig.log_every=1",
                      "TrainConfig.num_sample_predictions=0")


def _train(run_dir, gin_files, *bindings):
  gin_config.parse_gin(gin_files, FLAGS + list(bindings))
  return loop.train(str(run_dir), run_config.TrainConfig())


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("base") / "run"
  _train(run, ["runs/demo.gin"], "TrainConfig.num_steps=4", "OptimizerConfig.warmup_steps=0")
  return run


def _losses(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


def _saved_elements(item_dir):
  """Numbers stored in one Orbax item (from its metadata)."""
  import jax
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().metadata(str(item_dir)).item_metadata
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      tree, is_leaf=lambda x: hasattr(x, "shape")))


def _leaves(params):
  import jax
  from t5jax.model import trainable
  return [(trainable.path_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(params)]


def test_lora_run_saves_only_lora_and_resumes_exactly(base_run, tmp_path):
  lora = ["runs/finetune.gin", "runs/lora.gin"]
  init = f"CheckpointConfig.init_from='{base_run}'"
  whole = _train(tmp_path / "whole", lora, init, "TrainConfig.num_steps=6",
                 "CheckpointConfig.every_steps=3")
  _train(tmp_path / "split", lora, init, "TrainConfig.num_steps=3",
         "CheckpointConfig.every_steps=3")
  _train(tmp_path / "split", lora, init, "TrainConfig.num_steps=6",
         "CheckpointConfig.every_steps=3")
  assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
  assert [s["step"] for s in whole] == list(range(1, 7))

  meta = checkpoint.read_meta(str(tmp_path / "whole"))
  from t5jax.model import param_tree, t5
  cfg = checkpoint.model_config_from_meta(meta)
  params = checkpoint.load_params(str(tmp_path / "whole"),
                                  param_tree.abstract_params(t5.Transformer(cfg)))
  trained_b = params["encoder"]["layers_0"]["attention"]["lora_v"]["b"]
  assert np.abs(np.asarray(trained_b)).max() > 1e-4  # B left zero: the LoRA trained
  base = checkpoint.load_params(str(base_run), param_tree.abstract_params(
      t5.Transformer(cfg.replace(lora_rank=0))))
  np.testing.assert_array_equal(  # the base stayed frozen
      np.asarray(params["encoder"]["layers_0"]["attention"]["query"]),
      np.asarray(base["encoder"]["layers_0"]["attention"]["query"]))
  assert meta["peft"]["base"] == checkpoint.checkpoints_dir(str(base_run))
  assert meta["peft"]["base_step"] == 4
  # Only the LoRA and its optimizer state (AdamW: two moments) are saved.
  step_dir = tmp_path / "whole" / "checkpoints" / "6"
  lora_elements = sum(x.size for p, x in _leaves(params) if "lora_" in p)
  assert _saved_elements(step_dir / "params") == lora_elements
  assert 2 * lora_elements <= _saved_elements(step_dir / "train") < 2 * lora_elements + 100
  assert lora_elements < 0.01 * _saved_elements(base_run / "checkpoints" / "4" / "params")

  # Without its base a PEFT checkpoint says where the base must be.
  moved = base_run.parent / "moved"
  os.rename(base_run, moved)
  try:
    with pytest.raises(FileNotFoundError, match=r"the frozen ones are in base checkpoint .* "
                                                r"step 4, which is missing"):
      checkpoint.load_params(str(tmp_path / "whole"), param_tree.abstract_params(
          t5.Transformer(cfg)))
  finally:
    os.rename(moved, base_run)


def test_prompt_tuning_needs_unpacked_rows_and_a_prompt_within_the_inputs(base_run, tmp_path):
  prompt = ["runs/finetune.gin", "runs/prompt_tuning.gin"]
  init = f"CheckpointConfig.init_from='{base_run}'"
  with pytest.raises(ValueError, match="set InputSpec.pack = False"):
    _train(tmp_path / "p", prompt, init, "InputSpec.pack=True", "TrainConfig.num_steps=1")
  with pytest.raises(ValueError, match=r"prompt_length=40 is longer than inputs_length=32"):
    _train(tmp_path / "p", prompt, init, "PeftConfig.prompt_length=40",
           "TrainConfig.num_steps=1")
  # On a classification task with prompt_init="labels": the prompt starts from the mean
  # embeddings of the class labels ('entailment', 'not_entailment'), then common tokens.
  summaries = _train(tmp_path / "p", prompt, init, "TrainConfig.num_steps=2",
                     "PeftConfig.prompt_length=4", "PeftConfig.prompt_init='labels'",
                     "InputSpec.mixture_or_task='glue_rte'")
  assert np.isfinite(summaries[-1]["loss"])
  from t5jax.data import vocab
  from t5jax.model import param_tree, peft, t5
  cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(str(tmp_path / "p")))
  assert cfg.prompt_length == 4
  params = checkpoint.load_params(str(tmp_path / "p"),
                                  param_tree.abstract_params(t5.Transformer(cfg)))
  base = checkpoint.load_params(str(base_run), param_tree.abstract_params(
      t5.Transformer(cfg.replace(prompt_length=0))))
  embedding = np.asarray(base["token_embedder"])
  np.testing.assert_array_equal(np.asarray(params["token_embedder"]), embedding)  # frozen
  prompt = np.asarray(params[peft.PROMPT])
  for row, label in zip(prompt, ("entailment", "not_entailment")):
    want = embedding[vocab.get_vocabulary().encode(label)].mean(axis=0)
    cosine = row @ want / np.linalg.norm(row) / np.linalg.norm(want)
    assert cosine > 0.95, (label, cosine)  # two AdamW steps of 0.03 from it
