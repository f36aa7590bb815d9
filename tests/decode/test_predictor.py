"""Evaluation in training, keeping the best checkpoint, and the infer/score/eval CLI,
including scores of a converted Hugging Face model against transformers."""
import json
import os

import numpy as np
import pytest

from t5jax import checkpoint
from t5jax.cli import main as cli
from t5jax import config as gin_config
import t5jax.train.loop as train_lib

# The demo's model at two layers per stack (t5_1_0_tiny): the same code, half the work.
FAST = ["TrainConfig.model='t5_1_0_tiny'", "TrainConfig.batch_size=8",
        "InputSpec.inputs_length=32", "InputSpec.targets_length=32",
        "TrainConfig.log_every=5", "TrainConfig.num_sample_predictions=0",
        "OptimizerConfig.warmup_steps=0"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """15 steps with evaluation every 5; keeps the latest and the 'best' by max loss
  (i.e. the first), to show both preservation rules at work."""
  run_dir = str(tmp_path_factory.mktemp("run"))
  gin_config.parse_gin(["runs/demo.gin"], FAST + [
      "TrainConfig.num_steps=15", "EvalConfig.every_steps=5", "EvalConfig.max_examples=8",
      "EvalConfig.targets_length=32", "EvalConfig.inputs_length=64", "EvalConfig.batch_size=8",
      "CheckpointConfig.every_steps=5", "CheckpointConfig.keep=1",
      "CheckpointConfig.best_metric='multi30k_en_fr/loss'", "CheckpointConfig.best_mode='max'"])
  train_lib.train(run_dir, train_lib.TrainConfig())
  return run_dir


def test_training_evaluates_and_keeps_latest_and_best(trained_run):
  records = [json.loads(l) for l in open(os.path.join(trained_run, "metrics.jsonl"))]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [5, 10, 15]
  assert all("multi30k_en_fr/bleu" in r and "multi30k_en_de/loss" in r for r in evals)
  assert evals[-1]["multi30k_en_fr/loss"] < evals[0]["multi30k_en_fr/loss"]
  steps = sorted(int(p) for p in os.listdir(os.path.join(trained_run, "checkpoints"))
                 if p.isdigit())
  assert steps == [5, 15]  # latest (keep=1) + best by max loss (the first)


def run(args, capsys):
  code = cli.main(args)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_infer_cli_plain_and_json_lines(trained_run, tmp_path, capsys):
  src = tmp_path / "in.txt"
  src.write_text("The cat sat on the mat.\n\n" + json.dumps({"inputs": "A dog runs.", "id": 3})
                 + "\n" + "word " * 600 + "\n")
  out = tmp_path / "out.jsonl"
  code, _, err = run(["infer", f"--checkpoint={trained_run}", f"--input={src}",
                      f"--output={out}", "--prefix=translate English to French: ",
                      "--max_input_length=64", "--max_decode_length=16"], capsys)
  assert code == 0, err
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(lines) == 4
  assert lines[0]["inputs"] == "The cat sat on the mat." and isinstance(lines[0]["prediction"], str)
  assert lines[0]["log_likelihood"] < 0
  assert lines[1]["skipped"] == "empty input"
  assert lines[2]["id"] == 3
  assert "1 empty input line(s) skipped" in err
  assert "1 input(s) longer than 64 tokens were truncated" in err


def test_beam_and_sampling_flags(trained_run, tmp_path, capsys):
  src = tmp_path / "in.txt"
  src.write_text("translate English to German: Two men are talking.\n")
  for flags in (["--method=beam", "--num_beams=3", "--alpha=0.6"],
                ["--method=sample", "--top_k=5", "--temperature=0.7", "--seed=1"]):
    code, out, err = run(["infer", f"--checkpoint={trained_run}", f"--input={src}",
                          "--max_decode_length=8", *flags], capsys)
    assert code == 0, err
    assert "prediction" in json.loads(out.strip().splitlines()[-1])


def test_score_cli_adds_log_likelihood(trained_run, tmp_path, capsys):
  src = tmp_path / "pairs.jsonl"
  src.write_text(json.dumps({"inputs": "translate English to German: A man.",
                             "targets": "Ein Mann."}) + "\n")
  code, out, err = run(["score", f"--checkpoint={trained_run}", f"--input={src}"], capsys)
  assert code == 0, err
  record = json.loads(out.strip().splitlines()[-1])
  assert record["targets"] == "Ein Mann." and record["log_likelihood"] < 0


def test_eval_cli_prints_bleu_per_task(trained_run, tmp_path, capsys):
  code, out, err = run(["eval", f"--checkpoint={trained_run}", "--mixture=multi30k_mix",
                        "--max_examples=4", "--targets_length=16", "--max_input_length=64",
                        f"--output_dir={tmp_path}"], capsys)
  assert code == 0, err
  assert "multi30k_en_de" in out and "bleu" in out and "loss" in out
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert record["multi30k_en_fr/examples"] == 4


@pytest.mark.parametrize("args, message", [
    (["eval", "--mixture=multi30k_mixx"], "multi30k_mix"),
    (["score", "--input=/nonexistent.jsonl"], "--input /nonexistent.jsonl does not exist"),
])
def test_bad_input_errors(trained_run, capsys, args, message):
  code, _, err = run([args[0], f"--checkpoint={trained_run}", *args[1:]], capsys)
  assert code == 2 and message in err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
  code, _, err = run(["infer", f"--checkpoint={tmp_path / 'nope'}", "--input=-"], capsys)
  assert code == 2 and "does not exist" in err


def test_converted_hugging_face_model_scores_like_transformers(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from t5jax.data import assets
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                                 num_layers=2, num_decoder_layers=3, dropout_rate=0.0,
                                 feed_forward_proj="gated-gelu", decoder_start_token_id=0)
  hf = transformers.T5ForConditionalGeneration(config).eval()
  hf_dir = tmp_path / "hf"
  hf.save_pretrained(hf_dir)
  import shutil
  shutil.copyfile(assets.asset_path("t5_spm/spiece.model"), hf_dir / "spiece.model")
  code, _, err = run(["convert", f"--from-hf={hf_dir}", f"--out={tmp_path / 'ckpt'}"], capsys)
  assert code == 0, err
  pairs = [("translate English to German: The house is wonderful.", "Das Haus ist wunderbar."),
           ("summarize: a b c", "abc")]
  src = tmp_path / "pairs.jsonl"
  src.write_text("".join(json.dumps({"inputs": i, "targets": t}) + "\n" for i, t in pairs))
  code, out, err = run(["score", f"--checkpoint={tmp_path / 'ckpt'}", f"--input={src}"], capsys)
  assert code == 0, err
  ours = [json.loads(l)["log_likelihood"] for l in out.strip().splitlines()]
  tok = transformers.T5TokenizerFast if False else None
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "spiece.model"))
  for (inputs, targets), value in zip(pairs, ours):
    enc = torch.tensor([sp.encode(inputs) + [1]])
    labels = torch.tensor([sp.encode(targets) + [1]])
    with torch.no_grad():
      logits = hf(input_ids=enc, labels=labels).logits
    ref = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).sum().item()
    np.testing.assert_allclose(value, ref, rtol=1e-4)
  # And back: the exported directory loads in transformers with identical weights.
  code, _, err = run(["convert", f"--to-hf={tmp_path / 'ckpt'}", f"--out={tmp_path / 'back'}"],
                     capsys)
  assert code == 0, err
  back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back")
  for (name, a), (_, b) in zip(hf.state_dict().items(), back.state_dict().items()):
    assert torch.equal(a, b), name


def test_plot_draws_per_task_loss_curves(trained_run, tmp_path, capsys):
  out = tmp_path / "curves.png"
  code, stdout, err = run(["plot", trained_run, f"--output={out}"], capsys)
  assert code == 0, err
  data = out.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  from t5jax.cli import plot
  records = plot.read_metrics(trained_run)
  assert {r["split"] for r in records} == {"train", "eval"}


def test_vocabulary_larger_than_the_model_is_rejected():
  from t5jax.data import vocab
  from t5jax.decode.predictor import Predictor
  from t5jax.model import config as model_config
  cfg = model_config.get_config("t5_1_1_tiny", vocab_size=512)
  with pytest.raises(ValueError, match=r"vocabulary has 32100 pieces but the model has only 512"):
    Predictor(cfg, params={}, vocabulary=vocab.get_vocabulary())
