"""A run on its own vocabulary, end to end: a SentencePiece model trained here from shipped
German and English text, a task registered with it, training, evaluation (BLEU), inference,
`convert --to_hf`, and Hugging Face's T5Tokenizer and model on the export giving t5jax's
tokens and text; the checkpoint's vocabulary read back from a bucket; mT5-style fine-tuning
on the checkpoint's vocabulary; ByT5's bytes; and every mistake in one line."""

import dataclasses
import gzip
import json
import pathlib

import jax
import numpy as np
import pytest

import tiny
import seqio

from t5jax import checkpoint, fs
from t5jax.cli import main as cli
from t5jax.data import assets, registry, user_tasks, vocab
from t5jax.decode.predictor import Predictor
from t5jax.model import config as model_config, param_tree, t5

TINY = tiny.flags("TrainConfig.log_every=5",
                  "CheckpointConfig.every_steps=0",
                  "TrainConfig.num_sample_predictions=2",
                  "TrainConfig.max_decode_length=16",
                  "OptimizerConfig.warmup_steps=0")
ROWS = 1152  # 1,000 pieces + 100 sentinels, padded to a multiple of 128
GERMAN = [*TINY, f"--gin.TrainConfig.model_overrides={{'dtype': 'float32', 'vocab_size': {ROWS}}}",
          "--gin.InputSpec.mixture_or_task='test_de'"]


def _lines(name, n):
  with gzip.open(assets.asset_path(f"multi30k/{name}"), "rt", encoding="utf-8") as f:
    return [next(f).rstrip("\n") for _ in range(n)]


@pytest.fixture(scope="module")
def german(tmp_path_factory):
  """German text, its SentencePiece model (trained here), task `test_de` and a run on it."""
  import sentencepiece as spm
  root = tmp_path_factory.mktemp("german")
  en, de = _lines("train.en.gz", 2200), _lines("train.de.gz", 2200)
  (root / "text.txt").write_text("\n".join(en[:2000] + de[:2000]) + "\n", encoding="utf-8")
  spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "german"),
                                 vocab_size=1000, character_coverage=1.0, pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1, minloglevel=2)
  for split, rows in (("train", range(2000)), ("validation", range(2000, 2200))):
    (root / f"{split}.tsv").write_text("".join(f"{en[i]}\t{de[i]}\n" for i in rows),
                                       encoding="utf-8")
  from t5jax.data import metrics
  user_tasks.register_tsv_task(
      "test_de", {s: root / f"{s}.tsv" for s in ("train", "validation")},
      prefix="translate English to German: ", metric_fns=[metrics.bleu],
      vocabulary=str(root / "german.model"))
  run = root / "run"
  assert cli.main(["train", f"--run_dir={run}", *GERMAN, "--gin.TrainConfig.num_steps=30"]) == 0
  yield root, run
  seqio.TaskRegistry.remove("test_de")


def test_the_run_records_its_vocabulary(german):
  root, run = german
  assert (run / "spiece.model").read_bytes() == (root / "german.model").read_bytes()
  meta = checkpoint.read_meta(str(run))
  assert meta["vocab"]["kind"] == "sentencepiece" and meta["vocab"]["size"] == 1100
  predictor = Predictor.from_checkpoint(str(run))
  assert vocab.same(predictor.vocabulary, vocab.sentencepiece(root / "german.model"))
  assert not vocab.same(predictor.vocabulary, vocab.get_vocabulary())
  # The sample predictions were decoded with it too (T5's would read these ids as English).
  record = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
  assert record["targets"] == predictor.vocabulary.decode(
      predictor.vocabulary.encode(record["targets"]))


def test_eval_infer_and_the_hugging_face_export_agree(german, tmp_path, capsys, monkeypatch):
  import torch
  import transformers
  root, run = german
  monkeypatch.chdir(tmp_path)
  assert cli.main(["eval", "--checkpoint", str(run), "--task", "test_de",
                   "--max_examples", "8"]) == 0
  assert "test_de" in capsys.readouterr().out and "bleu" in (run / "eval" / "metrics.jsonl").read_text()
  line = "translate English to German: Two dogs are running through the snow."
  (tmp_path / "in.txt").write_text(line + "\n")
  assert cli.main(["infer", "--checkpoint", str(run), "--input", "in.txt",
                   "--output", "out.jsonl", "--max_decode_length", "16"]) == 0
  ours = json.loads((tmp_path / "out.jsonl").read_text())
  assert cli.main(["convert", "--to_hf", str(run), "--out", "hf"]) == 0
  assert (tmp_path / "hf" / "spiece.model").read_bytes() == (root / "german.model").read_bytes()
  tokenizer = transformers.T5Tokenizer.from_pretrained(tmp_path / "hf")
  predictor = Predictor.from_checkpoint(str(run))
  ids = tokenizer(line).input_ids
  assert ids == list(predictor.vocabulary.encode(line)) + [1]  # with EOS
  model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), do_sample=False, num_beams=1, max_new_tokens=16,
                         use_cache=False)[0, 1:].tolist()
  text = tokenizer.decode(out, skip_special_tokens=True)
  assert text == ours["prediction"], (text, ours)


def test_a_bucket_run_decodes_with_its_own_vocabulary(german):
  import gcs_server
  root, run = german
  gcs_server.start()
  target = f"gs://{gcs_server.BUCKET}/vocab-run"
  for path in run.rglob("*"):
    if path.is_file():
      fs.write_bytes(fs.join(target, str(path.relative_to(run))), path.read_bytes())
  predictor = Predictor.from_checkpoint(target)
  assert vocab.same(predictor.vocabulary, vocab.sentencepiece(root / "german.model"))


def _converted(directory, vocabulary, model="t5_1_0_tiny", **overrides):
  """A parameters-only checkpoint (as `convert --from_hf` writes) on `vocabulary`."""
  cfg = model_config.get_config(model, **overrides)
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                        param_tree.abstract_params(t5.Transformer(cfg)))
  meta = {"model_config": dataclasses.asdict(cfg), "vocab": vocab.record(vocabulary, None)}
  checkpoint.save_params(str(directory), params, meta)
  vocab.record(vocabulary, str(directory))
  return directory


def test_fine_tuning_on_another_vocabulary_is_one_line_unless_asked(german, tmp_path, capsys):
  english = _converted(tmp_path / "english", vocab.get_vocabulary(), vocab_size=ROWS)
  code = cli.main(["train", f"--run_dir={tmp_path / 'ft'}", f"--init_from={english}", *GERMAN,
                   "--gin.TrainConfig.num_steps=1"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1, err
  assert "trained on T5's SentencePiece model" in err and "german.model" in err, err
  assert "vocabulary_change=True" in err and "'init_from'" in err
  assert cli.main(["train", f"--run_dir={tmp_path / 'adapted'}", f"--init_from={english}",
                   *GERMAN, "--gin.TrainConfig.num_steps=1",
                   "--gin.CheckpointConfig.vocabulary_change=True"]) == 0


def test_shipped_tasks_on_the_checkpoints_vocabulary(german, tmp_path):
  """mT5's way: a converted checkpoint with its own spiece.model, fine-tuned on a shipped
  task tokenized with that vocabulary (InputSpec.vocabulary = 'init_from')."""
  root, _ = german
  source = _converted(tmp_path / "mt5_like", vocab.sentencepiece(root / "german.model"),
                      vocab_size=ROWS)
  run = tmp_path / "ft"
  assert cli.main(["train", f"--run_dir={run}", f"--init_from={source}", *TINY,
                   f"--gin.TrainConfig.model_overrides={{'vocab_size': {ROWS}}}",
                   "--gin.InputSpec.mixture_or_task='multi30k_en_de'",
                   "--gin.InputSpec.vocabulary='init_from'", "--gin.TrainConfig.num_steps=2"]) == 0
  assert (run / "spiece.model").read_bytes() == (root / "german.model").read_bytes()
  # The shipped task is T5's again once the run is over.
  task = seqio.get_mixture_or_task("multi30k_en_de")
  assert vocab.same(task.output_features["targets"].vocabulary, vocab.get_vocabulary())


def test_bytes_end_to_end(tmp_path, monkeypatch, capsys):
  """ByT5's vocabulary: a shipped task as bytes, trained, decoded, exported for
  transformers' ByT5Tokenizer."""
  import transformers
  monkeypatch.chdir(tmp_path)
  assert cli.main(["train", "--run_dir=runs/bytes", *TINY,
                   "--gin.TrainConfig.model_overrides={'dtype': 'float32', 'vocab_size': 384}",
                   "--gin.InputSpec.mixture_or_task='multi30k_en_de'",
                   "--gin.InputSpec.vocabulary='byte'", "--gin.TrainConfig.num_steps=2"]) == 0
  assert checkpoint.read_meta("runs/bytes")["vocab"]["kind"] == "byte"
  assert not (tmp_path / "runs" / "bytes" / "spiece.model").exists()
  predictor = Predictor.from_checkpoint("runs/bytes")
  line = "translate English to German: Zwei Hunde, café."
  assert list(predictor.vocabulary.encode(line)) == [b + 3 for b in line.encode("utf-8")]
  assert cli.main(["convert", "--to_hf", "runs/bytes", "--out", "hf_bytes"]) == 0
  assert json.loads((tmp_path / "hf_bytes" / "config.json").read_text())["tokenizer_class"] == \
      "ByT5Tokenizer"
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf_bytes")
  assert tokenizer(line).input_ids == list(predictor.vocabulary.encode(line)) + [1]
  # And back: a ByT5 checkpoint (ByT5Tokenizer, no spiece.model) converts to bytes.
  assert cli.main(["convert", "--from_hf", "hf_bytes", "--out", "from_hf"]) == 0
  assert checkpoint.read_meta("from_hf")["vocab"]["kind"] == "byte"
  capsys.readouterr()


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "Vocabulary file {path} does not exist"),
    (lambda d: d.write_text("not a model"), "Vocabulary file {path} is not a SentencePiece model"),
])
def test_a_bad_vocabulary_file_is_one_line(tmp_path, make, message):
  path = tmp_path / "spiece.model"
  make(path)
  (tmp_path / "t.tsv").write_text("a\tb\n")
  with pytest.raises(ValueError, match=message.format(path=path)) as info:
    user_tasks.register_tsv_task("test_bad_vocab", tmp_path / "t.tsv", vocabulary=str(path))
  assert "\n" not in str(info.value) and "test_bad_vocab" not in seqio.TaskRegistry.names()


def test_wrong_special_ids_and_too_small_a_model_are_one_line(german, tmp_path, capsys):
  import sentencepiece as spm
  root, _ = german
  spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(tmp_path / "x"),
                                 vocab_size=500, minloglevel=2)  # spm's defaults: unk 0, bos 1
  with pytest.raises(ValueError, match=r"has pad id -1 and EOS id 2; T5 needs pad 0 and EOS 1"):
    vocab.sentencepiece(tmp_path / "x.model")
  code = cli.main(["train", f"--run_dir={tmp_path / 'small'}", *GERMAN,
                   "--gin.TrainConfig.model_overrides={'vocab_size': 512}"])
  err = capsys.readouterr().err
  assert code == 2 and "has 1,100 ids but model t5_1_0_tiny has 512 embedding rows" in err, err


def test_a_mixture_of_two_vocabularies_is_one_line_naming_both(german):
  with pytest.raises(ValueError, match=r"mixture 'test_mixed' mixes vocabularies: task "
                     r"'multi30k_en_fr' uses T5's SentencePiece model .* but 'test_de' uses "
                     r"the SentencePiece model .*german.model"):
    user_tasks.register_mixture("test_mixed", ["multi30k_en_fr", "test_de"])
  with registry.tokenized_with("multi30k_en_fr", vocab.byte_vocabulary()):
    task = seqio.get_mixture_or_task("multi30k_en_fr")
    assert isinstance(task.output_features["inputs"].vocabulary, seqio.ByteVocabulary)
  assert vocab.same(seqio.get_mixture_or_task("multi30k_en_fr").output_features["inputs"]
                    .vocabulary, vocab.get_vocabulary())


def test_checkpoints_of_before_decode_with_t5s(tmp_path):
  """A checkpoint written before vocabularies were recorded names T5's in its metadata."""
  assert vocab.load(str(tmp_path), {"size": 32100, "extra_ids": 100}) is vocab.get_vocabulary()
  assert vocab.load(str(tmp_path), {"sentencepiece": "t5jax:t5"}) is vocab.get_vocabulary()
  assert vocab.describe_record({"size": 32100, "extra_ids": 100}).startswith("T5's")
  assert pathlib.Path(vocab.get_vocabulary().sentencepiece_model_file).is_file()
