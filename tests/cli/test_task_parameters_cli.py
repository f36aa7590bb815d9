"""Soft sharing and adapters through the CLI: train, resume, infer/score per task,
evaluate per task, fine-tune from a plain checkpoint, export one task to Hugging Face."""
import json

import numpy as np
import pytest

import tiny
import torch
import transformers

from t5jax.cli import main as cli
from t5jax.decode.predictor import Predictor
from t5jax.model import task_params

FAST = tiny.flags("TrainConfig.log_every=5",
                  "TrainConfig.num_sample_predictions=2")
MODEL = ("--gin.TrainConfig.model_overrides={'dtype': 'float32', 'dropout_rate': 0.0, "
         "'task_slots': ('multi30k_en_fr', 'multi30k_en_de'), %s}")
SOFT = MODEL % "'task_specific': ('decoder.mlp', 'encoder.attention')"
ADAPTERS = MODEL % "'adapter_dim': 8"


@pytest.fixture(scope="module")
def soft_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("soft") / "run"
  assert cli.main(["train", f"--run_dir={run_dir}", "--gin.TrainConfig.num_steps=10",
                   "--gin.LossConfig.soft_sharing_l2=0.01", SOFT, *FAST]) == 0
  return run_dir


def _records(run_dir):
  return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_soft_run_logs_the_penalty_and_resumes(soft_run, capsys):
  records = _records(soft_run)
  assert records[0]["soft_sharing_distance"] > 0  # the copies moved apart
  assert records[-1]["soft_sharing_penalty"] == pytest.approx(
      0.01 * records[-1]["soft_sharing_distance"])
  assert cli.main(["train", f"--run_dir={soft_run}", "--gin.TrainConfig.num_steps=15",
                   "--gin.LossConfig.soft_sharing_l2=0.01", SOFT, *FAST]) == 0
  assert "Resumed from step 10" in capsys.readouterr().out
  # Resuming with other task parameters is refused before anything is set aside.
  code = cli.main(["train", f"--run_dir={soft_run}", "--gin.TrainConfig.num_steps=20",
                   ADAPTERS, *FAST])
  err = capsys.readouterr().err
  assert code != 0 and "task_specific" in err and "init_from" in err
  assert not list((soft_run / "checkpoints").glob("*unreadable*"))


def test_infer_and_score_need_and_use_the_task(soft_run, tmp_path, capsys):
  inputs = tmp_path / "in.jsonl"
  inputs.write_text(json.dumps({"inputs": "translate English to French: A dog runs.",
                                "targets": "Un chien court."}) + "\n")
  assert cli.main(["infer", f"--checkpoint={soft_run}", f"--input={inputs}"]) != 0
  assert "--task" in capsys.readouterr().err
  scores = {}
  for task in ("multi30k_en_fr", "multi30k_en_de"):
    out = tmp_path / f"{task}.jsonl"
    assert cli.main(["score", f"--checkpoint={soft_run}", f"--input={inputs}",
                     f"--output={out}", f"--task={task}"]) == 0
    scores[task] = json.loads(out.read_text())["log_likelihood"]
  assert scores["multi30k_en_fr"] != scores["multi30k_en_de"]  # each task's own copies
  assert cli.main(["infer", f"--checkpoint={soft_run}", f"--input={inputs}",
                   f"--output={tmp_path / 'p.jsonl'}", "--task=multi30k_en_fr"]) == 0
  assert "prediction" in json.loads((tmp_path / "p.jsonl").read_text())


def test_exported_task_copy_matches_transformers(soft_run, tmp_path, capsys):
  assert cli.main(["convert", f"--to_hf={soft_run}", f"--out={tmp_path / 'x'}"]) != 0
  assert "--task" in capsys.readouterr().err
  assert cli.main(["convert", f"--to_hf={soft_run}", f"--out={tmp_path / 'de'}",
                   "--task=multi30k_en_de"]) == 0
  predictor = Predictor.from_checkpoint(str(soft_run))
  hf = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "de")).eval()
  enc = np.array([[13, 8, 100, 42, 7, 1, 0, 0]], np.int32)
  tgt = np.array([[5, 9, 33, 1, 0, 0]], np.int32)
  ours = predictor.log_likelihood_tokens(enc, tgt, task="multi30k_en_de")
  with torch.no_grad():
    logits = hf(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                labels=torch.tensor(np.where(tgt > 0, tgt, -100), dtype=torch.long)).logits
  logp = torch.log_softmax(logits.float(), -1)[0, np.arange(4), tgt[0, :4]].sum().item()
  assert ours[0] == pytest.approx(logp, rel=1e-4)
  other = predictor.log_likelihood_tokens(enc, tgt, task="multi30k_en_fr")
  assert abs(other[0] - logp) > 1e-3


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  """A plain (hard-shared) T5 run to fine-tune from."""
  plain = tmp_path_factory.mktemp("plain") / "run"
  assert cli.main(["train", f"--run_dir={plain}", "--gin.TrainConfig.num_steps=5", *FAST]) == 0
  return plain


def test_soft_sharing_fine_tunes_from_a_plain_checkpoint(plain_run, tmp_path):
  """The plain weights fill the shared modules and their copies; the copies (separate
  buffers, so the donated state holds no buffer twice) train, the anchors (lambda = 0)
  stay the plain run's."""
  tuned = tmp_path / "tuned"
  assert cli.main(["train", f"--run_dir={tuned}", f"--init_from={plain_run}",
                   "--gin.TrainConfig.num_steps=2", SOFT, *FAST]) == 0
  original = Predictor.from_checkpoint(str(plain_run)).params
  soft = Predictor.from_checkpoint(str(tuned)).params
  for name in ("mlp", "mlp_task0", "mlp_task1"):
    moved = name != "mlp"
    got, want = soft["decoder"]["layers_0"][name]["wo"], original["decoder"]["layers_0"]["mlp"]["wo"]
    assert (not np.array_equal(got, want)) == moved, name


def test_adapters_fine_tune_from_a_plain_checkpoint_and_evaluate_per_task(plain_run, tmp_path,
                                                                         capsys):
  plain = plain_run
  tuned = tmp_path / "tuned"
  assert cli.main(["train", f"--run_dir={tuned}", f"--init_from={plain}",
                   "--gin.TrainConfig.num_steps=2", "--gin.OptimizerConfig.trainable='adapter_'",
                   ADAPTERS,
                   "--gin.EvalConfig.every_steps=1", "--gin.EvalConfig.max_examples=4",
                   "--gin.EvalConfig.targets_length=8", *FAST]) == 0
  out = capsys.readouterr().out
  assert "Fine-tuning from the parameters in" in out
  # The plain run's weights were loaded under the adapters and stayed frozen; only the
  # adapters trained (they start as the identity, so the model starts as the plain one).
  original = Predictor.from_checkpoint(str(plain))
  adapted = Predictor.from_checkpoint(str(tuned))
  shared = task_params.shared_only(adapted.params)
  for a, b in zip(jax_leaves(shared), jax_leaves(original.params)):
    np.testing.assert_array_equal(a, b)
  up = adapted.params["decoder"]["layers_1"]["adapter_task0"]["up"]
  assert np.abs(np.asarray(up)).max() > 0  # trained away from its zero start
  evals = [r for r in _records(tuned) if r["split"] == "eval"]
  assert {"multi30k_en_fr/bleu", "multi30k_en_de/bleu", "multi30k_en_fr/loss"} <= set(evals[0])
  enc = np.array([[13, 8, 100, 42, 7, 1, 0, 0]], np.int32)
  tgt = np.array([[5, 9, 33, 1, 0, 0]], np.int32)
  fr = adapted.log_likelihood_tokens(enc, tgt, task="multi30k_en_fr")
  de = adapted.log_likelihood_tokens(enc, tgt, task="multi30k_en_de")
  assert fr[0] != de[0] and abs(fr[0] - original.log_likelihood_tokens(enc, tgt)[0]) < 1.0
  assert cli.main(["convert", f"--to_hf={tuned}", f"--out={tmp_path / 'hf'}",
                   "--task=multi30k_en_fr"]) != 0
  assert "adapters" in capsys.readouterr().err


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_compile_plans_a_soft_shared_model_on_a_mesh(capsys, monkeypatch):
  import os
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", ""))
  code = cli.main(["compile", "--devices=8", "--gin_file=runs/demo.gin",
                   "--gin_file=mesh/fsdp_tp.gin", "--gin.TrainConfig.model='t5_1_0_tiny'",
                   "--gin.TrainConfig.model_overrides={'scan_layers': True, "
                   "'task_slots': ('multi30k_en_fr', 'multi30k_en_de'), "
                   "'task_specific': ('decoder.mlp',), 'adapter_dim': 16}"])
  assert code == 0
  report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  # t5_1_0_tiny (5,031,680) + 2 copies of 2 decoder MLPs (2 x 128 x 512 each)
  # + 2 adapters in each of 4 layers (2 x 128 x 16 each).
  assert report["parameters"] == 5_031_680 + 2 * 2 * 2 * 128 * 512 + 2 * 4 * 2 * 128 * 16
