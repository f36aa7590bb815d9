"""A battery of wrong inputs through the `t5jax` command line.

Each case runs one command in a working directory that holds a user's files and
asserts: a non-zero exit, no traceback, a message naming the culprit, and every
file the user had still there, byte for byte. Most cases fail before a model is
loaded, so they run in this process through `cli.main`. (A real process's stderr,
library start-up included, is checked by test_readme.py and test_lib_logs.py.)
"""

import hashlib
import io
import json
import os
import pathlib
import pickle
import sys

import jax
import numpy as np
import pytest
import torch

from t5jax.cli import args as cli_args, main as cli
from t5jax.interop import convert, hf_io
from t5jax.model import config as model_config
from t5jax.model import t5

# Large enough for the shipped 32100-piece vocabulary, otherwise as small as it gets.
TINY = model_config.T5Config(vocab_size=32128, d_model=8, d_kv=4, d_ff=16, num_heads=2,
                             num_encoder_layers=1, num_decoder_layers=1,
                             relative_attention_num_buckets=8, dtype="float32")


def _random_params(cfg):
  tokens = np.ones((1, 4), np.int32)
  boxed = jax.eval_shape(lambda: t5.Transformer(cfg).init(jax.random.key(0), tokens, tokens))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape).astype(np.float32),
                      boxed["params"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A tiny Hugging Face directory and its converted t5jax checkpoint (outside the cwd)."""
  root = tmp_path_factory.mktemp("models")
  hf_io.save_hf_dir(TINY, _random_params(TINY), root / "hf")
  convert.hf_to_checkpoint(str(root / "hf"), str(root / "ckpt"))
  return root


def _user_files(root: pathlib.Path, models: pathlib.Path) -> None:
  """What a user's working directory might hold, good files and bad."""
  files = {
      "notes.txt": "a regular file\n",
      "inputs.txt": "translate English to German: A man.\n",
      "inputs.jsonl": '{"inputs": "translate English to German: A man."}\n',
      "pairs.jsonl": '{"inputs": "translate English to German: A man.", "targets": "Ein Mann."}\n',
      "no_targets.jsonl": '{"inputs": "A man."}\n',
      "no_inputs.jsonl": '{"text": "A man."}\n',
      "broken.jsonl": '{"inputs": "fine"}\n{"inputs": "no closing brace"\n',
      "my_gin.gin": "TrainConfig.num_steps = \n",
      "syntax_error_tasks.py": "def broken(:\n",
      "missing_data_tasks.py": ("from t5jax.data import user_tasks\n"
                                "user_tasks.register_tsv_task('mine', {'train': 'nope.tsv'})\n"),
      "hf_no_config/model.safetensors": "not really\n",
      "hf_bad_json/config.json": "{not json",
      "hf_bart/config.json": json.dumps({"model_type": "bart"}),
      "hf_truncated/model.safetensors": (models / "hf" / "model.safetensors").read_bytes()[:200],
      "hf_truncated/config.json": (models / "hf" / "config.json").read_text(),
      "hf_pickle/config.json": (models / "hf" / "config.json").read_text(),
      "hf_no_weights/config.json": (models / "hf" / "config.json").read_text(),
      "run/metrics.jsonl": '{"step": 1, "loss": 2.0}\n',
      "runs/old/metrics.jsonl": '{"step": 1, "loss": 2.0}\n',  # runs/ must not upset gin
  }
  for name, content in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
  (root / "latin1.txt").write_bytes("translate English to German: caf\xe9\n".encode("latin-1"))
  (root / "empty_dir").mkdir()
  # An object torch's tensors-only loader refuses (a pickled class instance).
  torch.save({"shared.weight": torch.zeros(2), "extra": pickle.PickleError("x")},
             root / "hf_pickle" / "pytorch_model.bin")
  bad_vocab = root / "bad_vocab_ckpt"
  bad_vocab.mkdir()
  os.symlink(models / "ckpt" / "checkpoints", bad_vocab / "checkpoints")
  (bad_vocab / "spiece.model").write_bytes(b"not a sentencepiece model")


def _snapshot(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


CKPT = "{ckpt}"  # the converted checkpoint, by absolute path
TRAIN = ["train", "--run_dir=runs/x", "--gin.TrainConfig.num_steps=1"]

# (command, the culprit its message must name). Paths are relative to the user's cwd.
CASES = [
    # Names: gin files, bindings, tasks, modules, flag values.
    (["train", "--gin_file=runs/demoo.gin"], "runs/demoo.gin"),
    (TRAIN + ["--gin.TrainConfig.num_stepz=3"], "num_stepz"),
    (TRAIN + ["--gin_file=runs/finetune.gin", "--gin.ModelSettings.remat_polcy='full'"],
     "Did you mean remat_policy?"),
    (TRAIN + ["--gin.NO_SUCH_BINDING_XYZ=3"], "NO_SUCH_BINDING_XYZ"),
    (TRAIN + ["--gin_file=runs/finetune.gin", "--gin.LossConfig.z_los=1"], "z_los"),
    (TRAIN + ["--gin.TrainConfig.num_steps=(("], "TrainConfig.num_steps=(("),
    (TRAIN + ["--gin.TrainConfig.num_steps"], "--gin.TrainConfig.num_steps"),
    (TRAIN + ["--gin.NoSuchThing.x=3"], "NoSuchThing"),
    (TRAIN + ["--gin.InputSpec.mixture_or_task='multi30k_en_frr'"], "multi30k_en_frr"),
    (TRAIN + ["--gin.OptimizerConfig.name='adamm'"], "adamm"),
    (TRAIN + ["--gin_file=./my_gin.gin"], "my_gin.gin"),
    (TRAIN + ["--module=no_such_tasks"], "no_such_tasks"),
    (TRAIN + ["--module=syntax_error_tasks"], "syntax_error_tasks"),
    (TRAIN + ["--module=missing_data_tasks"], "nope.tsv"),
    (["tasks", "--module=no_such_tasks"], "no_such_tasks"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.txt", "--method", "beem"], "beem"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.txt", "--dtype", "float8"], "float8"),
    (["eval", "--checkpoint", CKPT, "--task", "multi30k_en_frr"], "multi30k_en_frr"),
    (["eval", "--checkpoint", CKPT, "--task", "multi30k_en_fr", "--split", "tset",
      "--max_examples", "1"], "tset"),
    (["eval", "--checkpoint", CKPT, "--mixture", "no_such_mix"], "no_such_mix"),
    (["cache", "--task", "multi30k_en_frr"], "multi30k_en_frr"),
    (["cache", "--task", "multi30k_en_fr", "--split", "tset"], "tset"),
    (["cache", "--task", "c4_span_corruption"], "T5JAX_C4_DATA_DIR"),
    (["cache", "--task", "multi30k_en_fr", "--data_dir", "gs:/bucket/x"], "gs:/bucket/x"),
    (["cache", "--task", "multi30k_en_fr", "--workers", "-1"], "--workers=-1"),
    # Lengths, sizes, meshes.
    (TRAIN + ["--gin.InputSpec.inputs_length=0"], "inputs_length"),
    (TRAIN + ["--gin.TrainConfig.batch_size=12"], "12"),
    (TRAIN + ["--gin.MeshConfig.data=16"], "16 devices"),
    (TRAIN + ["--gin.MeshConfig.tensor=3"], "(-1, 1, 3)"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.txt", "--max_input_length", "0"],
     "--max_input_length=0"),
    (["score", "--checkpoint", CKPT, "--input", "pairs.jsonl", "--batch_size", "-1"],
     "--batch_size=-1"),
    (["compile", "--devices", "0"], "--devices=0"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.txt", "--gin.MeshConfig.data=16"],
     "16 devices"),
    (["eval", "--checkpoint", CKPT, "--task", "glue_rte_rank", "--split", "train"], "'train'"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.txt", "--method", "beam",
      "--num_beams", "2", "--num_return_sequences", "4"], "--num_return_sequences=4"),
    (["convert", "--to_hf", CKPT, "--out", "out", "--max_shard_bytes", "0"],
     "--max_shard_bytes=0"),
    # Files and directories.
    (TRAIN[:1] + ["--run_dir=notes.txt/run"], "notes.txt"),
    (TRAIN + ["--init_from=runs/never_trained"], "runs/never_trained"),
    (["infer", "--checkpoint", "runs/never_trained", "--input", "inputs.txt"],
     "runs/never_trained"),
    (["infer", "--checkpoint", "notes.txt", "--input", "inputs.txt"], "notes.txt"),
    (["infer", "--checkpoint", "empty_dir", "--input", "inputs.txt"], "empty_dir"),
    (["infer", "--checkpoint", CKPT, "--input", "missing.txt"], "missing.txt"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.jsonl", "--output", "inputs.jsonl"],
     "inputs.jsonl"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.txt", "--output", "notes.txt/o.jsonl"],
     "notes.txt"),
    (["infer", "--checkpoint", CKPT, "--input", "inputs.txt", "--output", "empty_dir"],
     "empty_dir"),
    (["eval", "--checkpoint", CKPT, "--task", "multi30k_en_fr", "--output_dir", "notes.txt"],
     "notes.txt"),
    (["plot", "runs/never_trained"], "runs/never_trained"),
    (["plot", "empty_dir"], "metrics.jsonl"),
    (["plot", "run", "--output", "notes.txt/p.png"], "notes.txt"),
    # JSONL and text inputs (read after the model loads).
    (["infer", "--checkpoint", CKPT, "--input", "broken.jsonl"], "Line 2"),
    (["infer", "--checkpoint", CKPT, "--input", "no_inputs.jsonl"], "'inputs'"),
    (["infer", "--checkpoint", CKPT, "--input", "latin1.txt"], "latin1.txt"),
    (["score", "--checkpoint", CKPT, "--input", "no_targets.jsonl"], "'targets'"),
    # Vocabularies and checkpoints.
    (["infer", "--checkpoint", "bad_vocab_ckpt", "--input", "inputs.txt"], "spiece.model"),
    (["convert", "--to_hf", "empty_dir", "--out", "hf_out"], "empty_dir"),
    (["convert", "--to_hf", CKPT, "--out", "notes.txt/hf"], "notes.txt"),
    (["convert", "--to_hf", CKPT, "--out", "notes.txt"], "notes.txt"),
    # Hugging Face directories.
    (["convert", "--from_hf", "hf_missing", "--out", "c"], "hf_missing"),
    (["convert", "--from_hf", "hf_no_config", "--out", "c"], "config.json"),
    (["convert", "--from_hf", "hf_bad_json", "--out", "c"], "config.json"),
    (["convert", "--from_hf", "hf_bart", "--out", "c"], "bart"),
    (["convert", "--from_hf", "hf_no_weights", "--out", "c"], "has no weights"),
    (["convert", "--from_hf", "hf_truncated", "--out", "c"], "model.safetensors"),
    (["convert", "--from_hf", "hf_pickle", "--out", "c"], "will not unpickle"),
    (["convert", "--from_hf", "{models}/hf", "--out", "{models}/ckpt"], "already holds"),
]


IDS = [f"{i:02d}-{argv[0]}:{culprit}" for i, (argv, culprit) in enumerate(CASES)]


@pytest.mark.parametrize("argv, culprit", CASES, ids=IDS)
def test_bad_input_is_one_line_naming_the_culprit_and_keeps_user_files(
    argv, culprit, models, tmp_path, monkeypatch, capsys):
  _user_files(tmp_path, models)
  before = _snapshot(tmp_path)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "stdin", io.StringIO(""))
  monkeypatch.setattr(sys, "path", list(sys.path))  # --module puts the cwd on it
  # `cache --data_dir` sets the variable for the process: restore it after the test.
  monkeypatch.setenv("T5JAX_DATA_DIR", os.environ.get("T5JAX_DATA_DIR", ""))
  argv = [a.replace(CKPT, str(models / "ckpt")).replace("{models}", str(models)) for a in argv]
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse's own errors
    code = e.code
  err = capsys.readouterr().err
  assert code not in (0, None), err
  assert "Traceback" not in err
  error_lines = [line for line in err.splitlines() if "error:" in line]
  assert len(error_lines) == 1, err
  assert culprit in error_lines[0], err
  after = _snapshot(tmp_path)
  assert {k: after.get(k) for k in before} == before  # nothing lost or changed


def test_the_battery_is_at_least_thirty_cases():
  assert len(CASES) >= 30
  assert len({tuple(argv) for argv, _ in CASES}) == len(CASES)


def test_every_option_says_what_it_does_and_its_default():
  parser = cli_args.parser()
  commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
  assert set(commands) == {"train", "compile", "infer", "score", "eval", "convert", "tasks",
                           "cache", "plot"}
  for name, sub in commands.items():
    help_text = " ".join(sub.format_help().split())
    for action in sub._actions:  # noqa: SLF001
      if action.dest == "help":
        continue
      assert action.help, f"t5jax {name} {action.option_strings or action.dest} has no help"
      if action.option_strings and not action.required and action.default not in (
          None, False, []):
        assert f"(default: {action.default})" in help_text or "(default:" in action.help, (
            name, action.dest)
    assert "--module" in help_text, name  # every subcommand can import the user's tasks


def test_flags_take_either_spelling_and_help_shows_one():
  """`convert --to-hf`, typed as the older docs spelt it, and `train --run-dir`, by analogy
  with it, both work; help shows the documented underscores only."""
  parser = cli_args.parser()
  assert parser.parse_args(["convert", "--to-hf", "ckpt", "--out", "o"]).to_hf == "ckpt"
  assert parser.parse_args(["convert", "--from_peft", "a", "--base", "b",
                            "--out", "o"]).from_peft == "a"
  assert parser.parse_args(["train", "--run-dir", "runs/x"]).run_dir == "runs/x"
  assert parser.parse_args(["infer", "--checkpoint", "c", "--input", "-",
                            "--max-decode-length", "7"]).max_decode_length == 7
  commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
  convert_help = commands["convert"].format_help()
  assert "--to_hf" in convert_help and "--to-hf" not in convert_help
