"""The README's commands, run as written from a working directory with a relative `runs/`.

The commands are read from README.md's ```bash blocks, so the README cannot
drift from what is tested. One short training run (the README's own default
training command with fewer steps) makes `runs/demo`, the LoRA fine-tune `runs/lora`;
then every inference,
evaluation, scoring, conversion, plotting and task-listing command that uses it
runs exactly as written, except sizes: the step count, and `--max_examples` (4)
for evaluation. The user's files they read (`inputs.txt`, `pairs.jsonl`,
`my_tasks.py` from the README's python block, `path/to/hf_t5`) are made first.
Training commands are parsed (flags and gin), not run, except the demo's and the LoRA
fine-tune's, which make `runs/demo` and `runs/lora` for the others. One command also runs in
a real shell, where its stderr must hold t5jax's lines only.
"""

import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from t5jax.cli import args as cli_args, main as cli
from t5jax import config as gin_config

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
STEPS = 2
EXAMPLES = "4"
RUN_COMMANDS = ("infer", "eval", "score", "convert", "plot", "tasks", "cache")


def _complete(command: str) -> bool:
  try:
    shlex.split(command, comments=True)
  except ValueError:  # an open quote: the command goes on on the next line
    return False
  return True


def _bash_lines(text: str) -> list[str]:
  """Each shell command of the ```bash blocks, continuation lines joined."""
  lines = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    command = ""
    for line in block.splitlines():
      command += line
      if command.endswith("\\"):
        command = command[:-1] + " "
        continue
      if not _complete(command):
        command += "\n"
        continue
      if command.strip():
        lines.append(command.strip())
      command = ""
  return lines


def _t5jax_words(line: str) -> tuple[list[str], str | None] | None:
  """(the words after `t5jax`, the text piped in by `echo` or None), or None if the
  line runs no t5jax command. Leading VAR=value assignments are dropped."""
  words = shlex.split(line, comments=True)
  if not words:
    return None
  stdin = None
  if "|" in words:
    left, words = words[:words.index("|")], words[words.index("|") + 1:]
    if left[:1] != ["echo"]:
      return None
    stdin = " ".join(left[1:]) + "\n"
  while words and re.fullmatch(r"[A-Z_0-9]+=.*", words[0]):
    words = words[1:]
  if words[:1] != ["t5jax"] or "..." in words:
    return None
  return words[1:], stdin


COMMANDS = [(line, *parsed) for line in _bash_lines(README)
            if (parsed := _t5jax_words(line)) is not None]


# Trained (with fewer steps) by the workdir fixture.
MADE_RUNS = ("runs/demo", "runs/lora", "runs/german")


def _uses_only_made_runs(words: list[str]) -> bool:
  return all(run in MADE_RUNS for w in words for run in re.findall(r"runs/[\w.]+", w)
             if not run.endswith(".gin"))


def _with_sizes(words: list[str]) -> list[str]:
  """The command with its sizes made small: evaluation examples."""
  if words[0] != "eval":
    return words
  if "--max_examples" in words:
    words = list(words)
    words[words.index("--max_examples") + 1] = EXAMPLES
    return words
  return [*words, "--max_examples", EXAMPLES]


def _in_bucket(words: list[str]) -> bool:
  return any("gs://my-bucket/" in w for w in words)


RUN = [(line, _with_sizes(words), stdin) for line, words, stdin in COMMANDS
       if words[0] in RUN_COMMANDS and _uses_only_made_runs(words) and not _in_bucket(words)]
# The pod section's commands on gs://my-bucket/demo, run in order against a GCS API server.
POD = [(line, words, stdin) for line, words, stdin in COMMANDS
       if any("gs://my-bucket/demo" in w for w in words)]
PARSE = [(line, words) for line, words, _ in COMMANDS if words[0] in ("train", "compile")]
TRAIN_DEMO = next(words for _, words in PARSE if "--run_dir=runs/demo" in words)
TRAIN_LORA = next(words for _, words in PARSE if "--run_dir=runs/lora" in words)
TRAIN_GERMAN = next(words for _, words in PARSE if "--run_dir=runs/german" in words)


def test_the_readme_has_the_commands_a_newcomer_runs():
  kinds = {words[0] for _, words, _ in RUN}
  assert kinds == set(RUN_COMMANDS), kinds
  assert any(stdin for _, _, stdin in RUN)  # the echo ... | t5jax infer --input - one
  assert len(RUN) >= 10 and len(PARSE) >= 8, (len(RUN), len(PARSE))


def _python_block(name: str) -> str:
  return next(block for block in re.findall(r"```python\n(.*?)```", README, re.S)
              if block.startswith(f"# {name}"))


def _german_text(lines: int = 1000) -> None:
  """de_en/text.txt (German and English) and de_en/{train,dev}.tsv, from the shipped text."""
  import gzip
  from t5jax.data import assets
  text = {}
  for lang in ("en", "de"):
    with gzip.open(assets.asset_path(f"multi30k/train.{lang}.gz"), "rt", encoding="utf-8") as f:
      text[lang] = [next(f).rstrip("\n") for _ in range(lines)]
  pathlib.Path("de_en").mkdir()
  pathlib.Path("de_en/text.txt").write_text("\n".join(text["en"] + text["de"]) + "\n")
  pairs = [f"{e}\t{d}\n" for e, d in zip(text["en"], text["de"])]
  pathlib.Path("de_en/train.tsv").write_text("".join(pairs[:-100]))
  pathlib.Path("de_en/dev.tsv").write_text("".join(pairs[-100:]))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A user's directory after `make demo` (with fewer steps) and with the README's inputs."""
  root = tmp_path_factory.mktemp("newcomer")
  old = os.getcwd()
  os.chdir(root)
  try:
    _german_text()  # the data my_german.py reads, from the shipped Multi30k
    pathlib.Path("my_german.py").write_text(_python_block("my_german.py"))
    # The LoRA run fine-tunes the demo's; the German one trains its SentencePiece model.
    for train in (TRAIN_DEMO, TRAIN_LORA, TRAIN_GERMAN):
      assert cli.main([*train, f"--gin.TrainConfig.num_steps={STEPS}",
                       "--gin.TrainConfig.num_sample_predictions=0"]) == 0
    pathlib.Path("inputs.txt").write_text("A man rides a horse.\nTwo dogs play.\n")
    pathlib.Path("lines.txt").write_text("A man rides a horse.\n")
    pathlib.Path("prefixed.jsonl").write_text(json.dumps(
        {"inputs": "translate English to German: Two dogs play.", "targets_prefix": "Zwei"})
        + "\n")
    pathlib.Path("pairs.jsonl").write_text(
        json.dumps({"inputs": "translate English to German: A man.", "targets": "Ein Mann."})
        + "\n")
    pathlib.Path("my_tasks.py").write_text(_python_block("my_tasks.py"))
    pathlib.Path("my_corpus.py").write_text(_python_block("my_corpus.py"))
    pathlib.Path("corpus").mkdir()
    for part in range(2):
      pathlib.Path(f"corpus/part{part}.txt").write_text("".join(
          f"Document {i} of part {part} says that the cat sat on mat number {i * 7}.\n"
          for i in range(200)))
    pathlib.Path("data").mkdir()
    for split in ("train", "dev"):
      pathlib.Path(f"data/{split}.tsv").write_text("red cat\ttac der\nbig dog\tgod gib\n")
    from t5jax.interop import convert
    convert.checkpoint_to_hf("runs/demo", "path/to/hf_t5")
    convert.checkpoint_to_hf("runs/lora", "lora_peft")  # what --from_peft reads
  finally:
    os.chdir(old)
  return root


def _outputs(words: list[str]) -> list[str]:
  """The paths a command promises to write."""
  paths = [words[i + 1] for i, w in enumerate(words[:-1])
           if w in ("--output", "--out", "--output_dir") and words[i + 1] != "-"]
  if words[0] == "plot":
    paths.append(f"{words[1]}/loss_by_task.png")
  if words[0] == "eval" and "--output_dir" not in words:
    paths.append(f"{words[words.index('--checkpoint') + 1]}/eval/metrics.jsonl")
  return paths


@pytest.fixture
def forget_user_tasks():
  """The README's my_tasks module and its task stay out of the other tests' way."""
  yield
  import seqio
  for module, task in (("my_tasks", "my_reverse"), ("my_corpus", "my_corpus"),
                       ("my_german", "my_de")):
    sys.modules.pop(module, None)
    if task in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(task)


@pytest.mark.parametrize("line, words, stdin", RUN, ids=[" ".join(w[:4]) for _, w, _ in RUN])
def test_readme_command_runs_as_written(line, words, stdin, workdir, monkeypatch, capsys,
                                        forget_user_tasks):
  monkeypatch.chdir(workdir)
  if words[0] == "cache":  # The store goes to the user's data dir, not the shared one.
    monkeypatch.setenv("T5JAX_DATA_DIR", str(workdir / "data_dir"))
  monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
  monkeypatch.setattr(sys, "path", list(sys.path))  # --module puts the cwd on it
  code = cli.main(words)
  out, err = capsys.readouterr()
  assert code == 0, f"{line}\n{err}"
  assert "Traceback" not in err and "error" not in err.lower(), err
  for path in _outputs(words):
    assert (workdir / path).exists(), (line, path)
  if words[0] == "infer" and "--output" not in words:
    records = [json.loads(l) for l in out.splitlines()]
    assert records and all(isinstance(r["prediction"], str) for r in records), out
  if words[0] == "tasks":
    assert "multi30k_en_fr" in out and ("my_reverse" in out) == ("--module" in words)
  if words[0] == "eval":
    task = words[words.index("--task") + 1] if "--task" in words else "multi30k_en_fr"
    metric = ("loss" if "--loss_only" in words else "accuracy" if task.endswith("_rank")
              else "bleu")
    assert re.search(rf"{task}\s+.*\b{metric}\b", out), out
  if words[0] == "infer" and "--num_return_sequences" in words:
    records = [json.loads(l) for l in (workdir / words[words.index("--output") + 1])
               .read_text().splitlines()]
    assert all(1 <= len(r["predictions"]) <= 3 for r in records), records
  if words[0] == "infer" and "prefixed.jsonl" in words:
    record = json.loads((workdir / "continued.jsonl").read_text())
    assert record["prediction"].startswith("Zwei"), record
  if words[0] == "cache":
    assert "my_corpus/train: 400 examples" in out, out
    assert "2/2 shards" in err and "M tokens/s" in err, err


@pytest.mark.parametrize("line, words", PARSE, ids=[" ".join(w[:3]) for _, w in PARSE])
def test_readme_training_command_parses(line, words, workdir, monkeypatch):
  """Flags, gin bindings and model settings of every training command (nothing is
  trained)."""
  import t5jax.train.run_config  # noqa: F401  (the configurables)
  monkeypatch.chdir(workdir)
  bindings, rest = cli._split_gin_flags(words)  # noqa: SLF001
  args = cli_args.parser().parse_args(rest)
  gin_config.parse_gin(args.gin_file or ["runs/demo.gin"], bindings)
  if getattr(args, "init_from", None):
    assert (workdir / args.init_from).is_dir()
  t5jax.train.run_config.TrainConfig().model_config()  # the model's settings are valid


def test_first_readme_command_in_a_real_shell_prints_only_t5jax_lines(workdir, tmp_path):
  """`echo ... | t5jax infer --checkpoint runs/demo --input -` through bash, as typed."""
  line = next(line for line, words, stdin in RUN if stdin)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "t5jax").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m t5jax "$@"\n')
  (bin_dir / "t5jax").chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
  for name in ("TF_CPP_MIN_LOG_LEVEL", "T5JAX_LIB_LOGS", "XLA_FLAGS"):
    env.pop(name, None)
  result = subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout)["inputs"].startswith("translate English to French:")
  # t5jax's own line only: no library logs (I0000/E0000 ..., CUDA probing, oneDNN).
  assert result.stderr.splitlines() == [l for l in result.stderr.splitlines()
                                        if l.startswith("Loaded runs/demo:")], result.stderr


def test_readme_pod_commands_run_against_a_local_bucket(workdir, monkeypatch, capsys):
  """The pod section as written, against fake-gcs-server: train, the same command again
  (it resumes from the bucket), infer and plot reading the run from the bucket."""
  import gcs_server
  from t5jax import fs
  gcs_server.start()
  gcs_server.shared().create_bucket("my-bucket")
  monkeypatch.chdir(workdir)
  monkeypatch.setattr(sys, "stdin", io.StringIO(""))
  trains = [words for _, words, _ in POD if words[0] == "train"]
  assert len(trains) >= 2 and all(words == trains[0] for words in trains), trains
  for steps in (STEPS, 2 * STEPS):  # a preempted run, then the same command again
    assert cli.main([*trains[0], f"--gin.TrainConfig.num_steps={steps}",
                     "--gin.TrainConfig.num_sample_predictions=0"]) == 0
  out, err = capsys.readouterr()
  assert f"Resumed from step {STEPS} in gs://my-bucket/demo/checkpoints" in out, out
  logged = [json.loads(l)["step"] for l in fs.read_text("gs://my-bucket/demo/metrics.jsonl")
            .splitlines()]
  assert logged == [STEPS, 2 * STEPS], logged  # each run's last step, appended in the bucket
  others = [(line, words, stdin) for line, words, stdin in POD if words[0] != "train"]
  assert {words[0] for _, words, _ in others} == {"infer", "plot"}
  for line, words, stdin in others:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
    code = cli.main(words)
    out, err = capsys.readouterr()
    assert code == 0, f"{line}\n{err}"
    if words[0] == "infer":
      assert isinstance(json.loads(out)["prediction"], str), out
    else:
      assert fs.isfile("gs://my-bucket/demo/loss_by_task.png"), out
  assert not [p for p in workdir.rglob("gs:*")]  # no URL became a local folder
