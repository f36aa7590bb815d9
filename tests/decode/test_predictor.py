"""Evaluation in training, keeping the best checkpoint, and the infer/score/eval CLI,
including scores of a converted Hugging Face model against transformers."""
import json
import os

import numpy as np
import pytest

import tiny

from t5jax import checkpoint
from t5jax.cli import main as cli
from t5jax import config as gin_config
from t5jax.train import loop, run_config

FAST = tiny.bindings("TrainConfig.log_every=5",
                     "TrainConfig.num_sample_predictions=0",
                     "OptimizerConfig.warmup_steps=0")


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
  loop.train(run_dir, run_config.TrainConfig())
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
  code, _, err = run(["convert", f"--from_hf={hf_dir}", f"--out={tmp_path / 'ckpt'}"], capsys)
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
  code, _, err = run(["convert", f"--to_hf={tmp_path / 'ckpt'}", f"--out={tmp_path / 'back'}"],
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


# ---- Richer outputs: several per input, a decoder prefix, per-token scores ----

GERMAN = "translate English to German: Two men are talking."


def test_several_outputs_per_input_best_first(trained_run, tmp_path, capsys):
  src = tmp_path / "in.txt"
  src.write_text(GERMAN + "\ntranslate English to French: A dog runs.\n")
  for flags, k in ((["--method=beam", "--num_beams=4", "--num_return_sequences=3"], 3),
                   (["--method=sample", "--temperature=1.0", "--num_samples=3", "--seed=2"], 3)):
    code, out, err = run(["infer", f"--checkpoint={trained_run}", f"--input={src}",
                          "--max_decode_length=8", *flags], capsys)
    assert code == 0, err
    for record in map(json.loads, out.strip().splitlines()):
      assert len(record["predictions"]) == len(record["scores"]) <= k
      assert record["scores"] == sorted(record["scores"], reverse=True)
      assert record["predictions"][0] == record["prediction"]
      assert record["scores"][0] == record["score"]
  # The beams are distinct sequences; the best is what beam search alone returns.
  from t5jax.decode import decoding
  from t5jax.decode.predictor import Predictor
  predictor = Predictor.from_checkpoint(trained_run)
  beam = decoding.DecodeConfig("beam", num_beams=4)
  many = predictor.generate_n([GERMAN], 3, strategy=beam, max_decode_length=8)[0]
  assert len({tuple(g.tokens) for g in many}) == len(many) == 3
  one = predictor.generate([GERMAN], strategy=beam, max_decode_length=8)[0]
  assert many[0].tokens == one.tokens and many[0].score == pytest.approx(one.score, rel=1e-6)
  samples = predictor.generate_n([GERMAN], 4, strategy=decoding.DecodeConfig(
      "sample", temperature=1.0, seed=3), max_decode_length=8)[0]
  assert len({tuple(g.tokens) for g in samples}) > 1  # independent draws, not one repeated


def test_targets_prefix_is_continued_and_not_scored(trained_run):
  """Greedy output forced to start with its own first two tokens is the same output, and
  its log-likelihood lacks exactly those two tokens' log-probabilities."""
  from t5jax.decode import decoding
  from t5jax.decode.predictor import Predictor
  predictor = Predictor.from_checkpoint(trained_run)
  free = predictor.generate([GERMAN], max_decode_length=12)[0]
  prefix_ids = free.tokens[:2]
  prefix = predictor.vocabulary.decode(prefix_ids)
  assert list(predictor.vocabulary.encode(prefix)) == prefix_ids
  forced = predictor.generate([GERMAN], max_decode_length=12, targets_prefix=[prefix])[0]
  assert forced.tokens == free.tokens
  # Each output token's log-probability, teacher-forced on the greedy output itself.
  token_logprobs = predictor.token_log_probs(
      np.array(predictor.encode([GERMAN], 64)), np.array([free.tokens]))[0]
  assert free.log_likelihood == pytest.approx(
      sum(token_logprobs), abs=1e-4 * abs(free.log_likelihood))
  assert forced.log_likelihood == pytest.approx(
      free.log_likelihood - sum(token_logprobs[:2]), abs=1e-4 * abs(free.log_likelihood))
  # Any prefix, every strategy: the output starts with it.
  wanted = predictor.vocabulary.encode("Zwei Frauen")
  for strategy in (decoding.DecodeConfig(), decoding.DecodeConfig("beam", num_beams=3),
                   decoding.DecodeConfig("sample", temperature=1.0)):
    got = predictor.generate([GERMAN, GERMAN], max_decode_length=12, strategy=strategy,
                             targets_prefix=["Zwei Frauen", ""])
    assert got[0].tokens[:len(wanted)] == list(wanted), strategy
    assert got[0].text.startswith("Zwei Frauen")
    assert got[0].log_likelihood < 0 and got[0].log_likelihood > -1e5


def test_token_scores_add_up_to_the_log_likelihood(trained_run, tmp_path, capsys):
  src = tmp_path / "pairs.jsonl"
  src.write_text(json.dumps({"inputs": GERMAN, "targets": "Zwei Männer sprechen."}) + "\n")
  code, out, err = run(["score", f"--checkpoint={trained_run}", f"--input={src}",
                        "--token_scores"], capsys)
  assert code == 0, err
  record = json.loads(out.strip().splitlines()[-1])
  assert record["target_tokens"][-1] == "</s>"
  assert "".join(record["target_tokens"][:-1]).replace("▁", " ").strip() \
      == "Zwei Männer sprechen."
  assert len(record["token_scores"]) == len(record["target_tokens"])
  assert all(s < 0 for s in record["token_scores"])
  assert sum(record["token_scores"]) == pytest.approx(record["log_likelihood"], rel=1e-5)


@pytest.mark.parametrize("flags, message", [
    (["--method=beam", "--num_beams=2", "--num_return_sequences=3"],
     "--num_return_sequences=3 is more than --num_beams=2"),
    (["--num_return_sequences=2"], "add --method=beam"),
    (["--method=beam", "--num_samples=2"], "add --method=sample"),
    (["--method=sample", "--temperature=0", "--num_samples=2"], "a temperature above 0"),
])
def test_several_outputs_bad_flags_are_one_line(trained_run, tmp_path, capsys, flags, message):
  src = tmp_path / "in.txt"
  src.write_text(GERMAN + "\n")
  code, _, err = run(["infer", f"--checkpoint={trained_run}", f"--input={src}", *flags], capsys)
  assert code == 2 and message in err


def test_a_prefix_longer_than_the_decode_length_is_one_line(trained_run, tmp_path, capsys):
  src = tmp_path / "in.jsonl"
  src.write_text(json.dumps({"inputs": GERMAN, "targets_prefix": "Zwei Männer " * 5}) + "\n")
  code, _, err = run(["infer", f"--checkpoint={trained_run}", f"--input={src}",
                      "--max_decode_length=6"], capsys)
  assert code == 2 and "in.jsonl line 1: The targets prefix" in err
  assert "leaves no room in max_decode_length=6" in err
  assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1, err
  assert "Traceback" not in err


# ---- Evaluation: a loss for every task, per-example logs, rank classification ----

def test_eval_logs_every_example_and_a_loss_for_tasks_without_metrics(trained_run, tmp_path,
                                                                      capsys):
  code, out, err = run(["eval", f"--checkpoint={trained_run}", "--task=multi30k_en_de",
                        "--max_examples=3", "--targets_length=12", "--max_input_length=32",
                        f"--output_dir={tmp_path}"], capsys)
  assert code == 0, err
  step = checkpoint.latest_step(trained_run)
  lines = [json.loads(l) for l in (tmp_path / f"multi30k_en_de-{step}.jsonl").read_text()
           .splitlines()]
  assert len(lines) == 3
  assert lines[0]["inputs"].startswith("translate English to German: ")
  assert all(isinstance(l["prediction"], str) and l["score"] < 0 and l["targets"]
             for l in lines)
  # A pretraining task has no metrics: its validation loss comes without any decoding.
  code, out, err = run(["eval", f"--checkpoint={trained_run}", "--task=text_span_corruption",
                        "--max_examples=4", "--targets_length=32", "--max_input_length=64",
                        f"--output_dir={tmp_path / 'pt'}"], capsys)
  assert code == 0, err
  record = json.loads((tmp_path / "pt" / "metrics.jsonl").read_text().splitlines()[-1])
  assert record["split"] == "eval_validation"
  assert 0 < record["text_span_corruption/loss"] < 20
  assert 0 <= record["text_span_corruption/token_accuracy"] <= 1
  assert record["text_span_corruption/examples"] == 4
  assert not list((tmp_path / "pt").glob("text_span_corruption-*.jsonl"))


def test_loss_only_matches_the_full_evaluation_loss(trained_run, tmp_path, capsys):
  args = ["eval", f"--checkpoint={trained_run}", "--task=multi30k_en_fr", "--max_examples=4",
          "--targets_length=12", "--max_input_length=32"]
  assert run(args + [f"--output_dir={tmp_path / 'full'}"], capsys)[0] == 0
  code, _, err = run(args + ["--loss_only", f"--output_dir={tmp_path / 'loss'}"], capsys)
  assert code == 0, err
  full, loss = (json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1])
                for d in ("full", "loss"))
  assert "multi30k_en_fr/bleu" in full and "multi30k_en_fr/bleu" not in loss
  assert loss["multi30k_en_fr/loss"] == full["multi30k_en_fr/loss"]
  assert not list((tmp_path / "loss").glob("*-*.jsonl"))


def test_rank_classification_scores_each_choice(trained_run, tmp_path, capsys):
  from t5jax.decode.predictor import Predictor
  code, out, err = run(["eval", f"--checkpoint={trained_run}", "--task=glue_rte_rank",
                        "--max_examples=6", "--max_input_length=64", "--targets_length=8",
                        f"--output_dir={tmp_path}"], capsys)
  assert code == 0, err
  step = checkpoint.latest_step(trained_run)
  lines = [json.loads(l) for l in (tmp_path / f"glue_rte_rank-{step}.jsonl").read_text()
           .splitlines()]
  assert len(lines) == 3  # 6 scored examples: 3 source examples of 2 choices each
  predictor = Predictor.from_checkpoint(trained_run)
  for line in lines:
    assert sorted(line["choices"]) == ["entailment", "not_entailment"]
    assert line["targets"] in line["choices"]
    best = max(range(2), key=lambda i: line["scores"][i])
    assert line["prediction"] == line["choices"][best]
    # Each choice's score is the model's log-likelihood of it given the input.
    expected = predictor.score([line["inputs"]] * 2, line["choices"], max_input_length=64,
                               max_target_length=8)
    np.testing.assert_allclose(line["scores"], expected, rtol=1e-4)
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  right = sum(l["prediction"] == l["targets"] for l in lines)
  assert record["glue_rte_rank/accuracy"] == pytest.approx(100.0 * right / 3)


def test_infer_resumes_after_the_last_line_written(trained_run, tmp_path, capsys):
  src = tmp_path / "in.txt"
  src.write_text("".join(f"translate English to French: {w}\n" for w in
                         ("A dog.", "Two cats.", "A red car.", "The sun.", "Children play.")))
  args = ["infer", f"--checkpoint={trained_run}", f"--input={src}", "--max_decode_length=8",
          "--batch_size=2"]
  whole = tmp_path / "whole.jsonl"
  assert run(args + [f"--output={whole}"], capsys)[0] == 0
  expected = whole.read_text().splitlines()
  # A killed run: two lines written and a third cut short.
  part = tmp_path / "part.jsonl"
  part.write_text(expected[0] + "\n" + expected[1] + "\n" + expected[2][:15])
  code, _, err = run(args + [f"--output={part}"], capsys)
  assert code == 0, err
  assert "holds the first 2 of 5 outputs" in err
  assert part.read_text().splitlines() == expected
  # Lines of other inputs are not overwritten by mistake.
  other = tmp_path / "other.jsonl"
  other.write_text(json.dumps({"inputs": "something else", "prediction": "x"}) + "\n")
  code, _, err = run(args + [f"--output={other}"], capsys)
  assert code == 2 and "holds lines for other inputs" in err
  assert run(args + [f"--output={other}", "--overwrite"], capsys)[0] == 0
  assert other.read_text().splitlines() == expected


# ---- The fine-tuning lifecycle: every checkpoint, continuous evaluation, early stopping ----

def test_eval_all_checkpoints_then_watch_skips_what_is_done(trained_run, tmp_path, capsys):
  args = ["eval", f"--checkpoint={trained_run}", "--task=multi30k_en_fr", "--max_examples=2",
          "--targets_length=8", "--max_input_length=32", "--loss_only",
          f"--output_dir={tmp_path}"]
  code, out, err = run(args + ["--all_checkpoints"], capsys)
  assert code == 0, err
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [5, 15]  # the run keeps these two
  assert records[0]["multi30k_en_fr/loss"] > records[1]["multi30k_en_fr/loss"]
  # Continuous evaluation of a finished run: nothing left, and the last step is done.
  code, out, err = run(args + ["--watch", "--watch_interval=0.1"], capsys)
  assert code == 0, err
  assert "every checkpoint is evaluated (the run's last step, 15)" in err
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(tmp_path):
  """best_mode 'max' on a falling loss: the first evaluation stays the best, so with
  patience 2 the run stops at its third evaluation, step 15 of 40."""
  run_dir = str(tmp_path / "run")
  gin_config.parse_gin(["runs/demo.gin"], FAST + [
      "TrainConfig.num_steps=40", "EvalConfig.every_steps=5", "EvalConfig.max_examples=4",
      "EvalConfig.targets_length=16", "EvalConfig.inputs_length=32", "EvalConfig.batch_size=4",
      "EvalConfig.decode=False", "CheckpointConfig.every_steps=0", "CheckpointConfig.keep=1",
      "CheckpointConfig.best_metric='multi30k_mix/loss'", "CheckpointConfig.best_mode='max'",
      "CheckpointConfig.patience=2"])
  loop.train(run_dir, run_config.TrainConfig())
  records = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["split"] == "eval"] == [5, 10, 15]
  assert max(r["step"] for r in records) == 15
  first_eval = next(r for r in records if r["split"] == "eval")
  assert checkpoint.read_meta(run_dir, 15)["early_stopping"] == {
      "metric": "multi30k_mix/loss", "mode": "max",
      "best": pytest.approx(first_eval["multi30k_mix/loss"]), "best_step": 5,
      "evals_since_best": 2}
  assert sorted(checkpoint.all_steps(run_dir)) == [5, 15]  # the best and the last


def test_patience_counts_across_a_resume_and_names_a_missing_metric():
  from t5jax.train import early_stopping
  p = early_stopping.Patience("glue_mix/average", "max", 2)
  assert not p.update(10, {"glue_mix/average": 50.0})
  assert not p.update(20, {"glue_mix/average": 49.0})
  resumed = early_stopping.Patience.resume("glue_mix/average", "max", 2, p.state())
  assert resumed.update(30, {"glue_mix/average": 50.0})  # not better than 50: the 2nd
  assert "best 50 at step 10" in resumed.reason(30)
  # Another metric starts counting afresh.
  assert early_stopping.Patience.resume("glue_mix/loss", "min", 2, p.state()).best is None
  typo = early_stopping.Patience("glue_mix/averge", "max", 2)
  with pytest.raises(ValueError, match=r"best_metric='glue_mix/averge' is not a metric of "
                                       r"this run's evaluation; did you mean glue_mix/average"):
    typo.update(40, {"glue_mix/average": 1.0, "glue_mix/loss": 2.0})
  with pytest.raises(ValueError, match="patience=3 needs a best_metric"):
    checkpoint.CheckpointConfig(patience=3)
