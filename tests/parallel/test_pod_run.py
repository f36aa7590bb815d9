"""A pod run for real: hosts that share nothing but the bucket.

Two processes on jax.distributed (127.0.0.1), each with its own working directory, HOME and
TMPDIR, train on a `gs://` run directory served by a real GCS API server on localhost. One
run directory goes through what a preemptible pod meets, in order: a preemption notice
(SIGTERM), a damaged latest checkpoint, both hosts killed (SIGKILL), and the storage going
away mid-run; each time the same command resumes, and the losses at the end equal those of
an uninterrupted run bit for bit. Plus the start-up faults, each one line before anything
compiles, and no local folder named `gs:` anywhere.
"""

import json
import pathlib
import signal

import pytest

import gcs_server
import hosts
import tiny
from t5jax.cli import main as cli

STEPS = 12
FLAGS = tiny.flags("TrainConfig.log_every=1",
                   "TrainConfig.num_sample_predictions=0",
                   "CheckpointConfig.every_steps=2",
                   "OptimizerConfig.warmup_steps=0",
                   f"TrainConfig.num_steps={STEPS}",
                   # Evaluation during training, across the processes (at the last step).
                   f"EvalConfig.every_steps={STEPS}",
                   "EvalConfig.max_examples=4",
                   "EvalConfig.batch_size=4",
                   "EvalConfig.targets_length=8")
RUN_PREFIX = "pod"


@pytest.fixture(scope="module")
def server():
  yield (s := gcs_server.Server())
  s.stop()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("hosts")


def _train(server, root, run: str, processes: int, *extra):
  devices = 4 // processes  # The same (data: 4) mesh on one process or two.
  return hosts.launch(root, server.url, ["train", f"--run_dir=gs://{gcs_server.BUCKET}/{run}",
                                         *FLAGS, *extra], processes, devices)


def _losses(server, run: str) -> dict[int, float]:
  return hosts.read_losses(server.read(f"{run}/metrics.jsonl").decode())


def _logged(server, run: str, step: int):
  def done():
    try:
      return max(_losses(server, run), default=0) >= step
    except OSError:  # not written yet
      return False
  return done


def _complete_steps(server, run: str) -> list[int]:
  """Steps whose checkpoint Orbax finished: commit_success.txt, written last."""
  prefix = f"{run}/checkpoints/"
  names = [n[len(prefix):].split("/") for n in server.list(prefix)]
  return sorted(int(n[0]) for n in names if n[1:] == ["commit_success.txt"] and n[0].isdigit())


@pytest.fixture(scope="module")
def reference(server, root):
  """Uninterrupted runs of the same command on one host (4 devices) and on two (2 each)."""
  one = _train(server, root / "one", f"{RUN_PREFIX}/one", 1)
  hosts.wait_all(one)
  procs = _train(server, root / "ref", f"{RUN_PREFIX}/ref", 2)
  outs = hosts.wait_all(procs)
  return outs, _losses(server, f"{RUN_PREFIX}/one"), _losses(server, f"{RUN_PREFIX}/ref")


def test_two_hosts_match_one_and_write_everything_to_the_bucket(server, reference, root):
  outs, one, two = reference
  assert sorted(two) == list(range(1, STEPS + 1)) and sorted(one) == sorted(two)
  for step in two:  # the same mesh; the processes' all-reduce may round the last bit
    # differently, and Adafactor carries that rounding on (2e-5 by step 11).
    assert two[step] == pytest.approx(one[step], rel=1e-4), step
  # Only process 0 logs; both evaluated (the table is process 0's).
  assert f"step {STEPS}/{STEPS}" in outs[0] and f"step {STEPS}/{STEPS}" not in outs[1]
  assert f"eval at step {STEPS}:" in outs[0] and "multi30k_en_fr" in outs[0]
  run = f"{RUN_PREFIX}/ref"
  names = server.list(f"{run}/")
  evals = [json.loads(l) for l in server.read(f"{run}/metrics.jsonl").decode().splitlines()
           if json.loads(l)["split"] == "eval"]
  assert len(evals) == 1 and evals[0]["multi30k_en_fr/loss"] > 0
  # The same evaluation as one process's (the parameters agree to ~1e-5), and what the
  # model said for each example, written by process 0 into the bucket.
  one_eval = next(json.loads(l) for l in server.read(f"{RUN_PREFIX}/one/metrics.jsonl")
                  .decode().splitlines() if json.loads(l)["split"] == "eval")
  assert evals[0]["multi30k_en_fr/loss"] == pytest.approx(one_eval["multi30k_en_fr/loss"],
                                                          rel=1e-3)
  logged = server.read(f"{run}/eval/multi30k_en_fr-{STEPS}.jsonl").decode().splitlines()
  assert len(logged) == 4 and all("prediction" in json.loads(l) for l in logged)
  assert f"{run}/config.gin" in names
  assert any(n.startswith(f"{run}/tb/events.out.tfevents.") for n in names)
  # Every checkpoint is complete in the bucket, with both processes' shards in it.
  assert _complete_steps(server, run) == [STEPS - 4, STEPS - 2, STEPS]  # keep=3
  for item in ("params", "train"):
    for process in (0, 1):
      assert any(n.startswith(f"{run}/checkpoints/{STEPS}/{item}/ocdbt.process_{process}/")
                 for n in names), (item, process)


def test_preemption_damage_sigkill_and_outage_resume_exactly(server, reference, root):
  """Two hosts through a pod's faults on one run directory: each time the same command
  resumes, and at the end every step's loss is the uninterrupted run's, bit for bit."""
  run = f"{RUN_PREFIX}/faults"
  # 1. A preemption notice (SIGTERM): both hosts save into the bucket and exit 0.
  procs = _train(server, root / "faults", run, 2)
  hosts.wait_until(_logged(server, run, 3), procs)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  outs = hosts.wait_all(procs)
  assert "SIGTERM received: saved step" in outs[0], outs[0][-2000:]
  saved = int(outs[0].split("SIGTERM received: saved step ")[1].split()[0])
  assert saved >= 3 and _complete_steps(server, run)[-1] == saved

  # 2. The latest checkpoint is damaged: set aside in the bucket (never deleted) and the
  #    one before it restored. Then both hosts are killed (SIGKILL) mid-run.
  *_, before, latest = _complete_steps(server, run)
  data = [n for n in server.list(f"{run}/checkpoints/{latest}/params/") if "/d/" in n]
  for name in data:
    server.write(name, b"\0garbage" * 64)
  procs = _train(server, root / "faults", run, 2)
  hosts.wait_until(_logged(server, run, latest + 2), procs)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  outs = hosts.wait_all(procs, ok=False)
  assert f"checkpoint at step {latest} is unreadable" in outs[0], outs[0][-3000:]
  assert f"Resumed from step {before}" in outs[0], outs[0][-3000:]
  assert any(f"/checkpoints/{latest}.unreadable-" in n for n in server.list(f"{run}/"))

  # 3. The storage goes away mid-run (saving every step, so mid-save too): both hosts stop,
  #    exit status 2, each with one line naming the run directory and its last complete
  #    checkpoint; a step being written is never listed.
  resumed = max(_losses(server, run))
  procs = _train(server, root / "faults", run, 2, "--gin.CheckpointConfig.every_steps=1")
  hosts.wait_until(_logged(server, run, resumed + 2), procs)
  server.stop()
  outs = hosts.wait_all(procs, timeout=300, ok=False)
  server.start()
  for p, out in zip(procs, outs):
    error = out.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert error.startswith("error: ") and f"gs://{gcs_server.BUCKET}/{run}" in error, error
    assert "the last complete checkpoint is step " in error, error
  assert "cannot be reached" in "".join(outs)
  last = int(outs[0].split("the last complete checkpoint is step ")[1].split()[0])
  complete = _complete_steps(server, run)
  assert complete[-1] >= last >= resumed - 1, (last, complete, resumed)

  # 4. The same command again finishes the run: every step's loss is the uninterrupted
  #    run's, bit for bit.
  outs = hosts.wait_all(_train(server, root / "faults", run, 2))
  assert f"Resumed from step {complete[-1]}" in outs[0], outs[0][-3000:]
  assert _losses(server, run) == reference[2]


def test_start_up_faults_are_one_line_before_anything_compiles(server, tmp_path, capsys,
                                                               monkeypatch):
  monkeypatch.chdir(tmp_path)
  cases = [
      (f"gs://no-such-bucket-t5jax/run", server.url,
       "bucket gs://no-such-bucket-t5jax does not exist"),
      ("s3://bucket/run", server.url, "s3:// is not supported; give a local path or gs://"),
      (f"gs:/{gcs_server.BUCKET}/run", server.url, "lost a slash"),
      (f"gs://{gcs_server.BUCKET}/run", "http://127.0.0.1:1", "the GCS server cannot be reached"),
  ]
  for run_dir, url, message in cases:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    code = cli.main(["train", f"--run_dir={run_dir}", *FLAGS])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and message in err, (run_dir, err)
    assert "Training" not in out  # nothing was built
  assert not list(pathlib.Path(tmp_path).iterdir())


def test_no_argument_became_a_local_folder_named_gs(root, reference):
  assert hosts.local_gs_folders(root, pathlib.Path.cwd()) == []
