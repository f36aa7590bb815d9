"""t5jax.fs: a run's files on local disk and in a bucket (a real GCS API server on localhost),
the same calls for both; TensorBoard events that TensorFlow's reader reads back."""

import subprocess
import sys
import uuid

import pytest

import gcs_server
from t5jax import fs
from t5jax.train import events


@pytest.fixture(scope="module", params=["local", "gcs"])
def base(request, tmp_path_factory):
  if request.param == "local":
    return str(tmp_path_factory.mktemp("fs"))
  gcs_server.start()
  return f"gs://{gcs_server.BUCKET}/fs-{uuid.uuid4().hex[:8]}"


def test_write_read_append_list_move(base):
  path = fs.join(base, "run", "metrics.jsonl")
  assert not fs.exists(path)
  for line in ("one\n", "two\n", "three\n"):
    fs.append_text(path, line)
  assert fs.read_text(path) == "one\ntwo\nthree\n"
  fs.write_text(fs.join(base, "run", "config.gin"), "a = 1\n")
  fs.write_text(fs.join(base, "run", "config.gin"), "a = 2\n")  # replaced whole
  assert fs.read_text(fs.join(base, "run", "config.gin")) == "a = 2\n"
  assert fs.listdir(fs.join(base, "run")) == ["config.gin", "metrics.jsonl"]  # no parts left
  fs.write_text(fs.join(base, "run", "checkpoints", "7", "x"), "x")
  fs.rename(fs.join(base, "run", "checkpoints", "7"),
            fs.join(base, "run", "checkpoints", "7.unreadable-1"))
  assert fs.listdir(fs.join(base, "run", "checkpoints")) == ["7.unreadable-1"]
  assert fs.read_text(fs.join(base, "run", "checkpoints", "7.unreadable-1", "x")) == "x"
  assert fs.isdir(fs.join(base, "run")) and fs.isfile(path) and not fs.isdir(path)
  fs.check_writable(fs.join(base, "fresh"))


def test_events_read_back_by_tensorflow(base, tmp_path):
  import tensorflow as tf
  logdir = fs.join(base, "tb")
  writer = events.EventsFile(logdir)
  writer.add_scalars(1, {"train/loss": 2.5, "train/skipped": float("nan"), "note": "text"})
  writer.add_scalars(2, {"train/loss": 1.25})
  [name] = fs.listdir(logdir)
  assert name.startswith("events.out.tfevents.")
  local = tmp_path / name
  local.write_bytes(fs.read_bytes(fs.join(logdir, name)))  # TF's own GCS client cannot reach the test server
  got = [(e.step, v.tag, v.simple_value) for e in tf.compat.v1.train.summary_iterator(str(local))
         for v in e.summary.value]
  assert got == [(1, "train/loss", 2.5), (2, "train/loss", 1.25)]


def test_urls_never_become_local_paths():
  assert fs.absolute("gs://bucket/run/") == "gs://bucket/run"
  assert fs.join("gs://bucket/run", "checkpoints") == "gs://bucket/run/checkpoints"
  assert fs.parent("gs://bucket/run/checkpoints") == "gs://bucket/run"
  with pytest.raises(ValueError, match=r"--run_dir s3://b/x: s3:// is not supported; give a local path or gs://BUCKET/PATH"):
    fs.check("s3://b/x", "--run_dir")
  with pytest.raises(ValueError, match="lost a slash"):
    fs.absolute("gs:/bucket/run")
  with pytest.raises(ValueError, match="names no bucket"):
    fs.absolute("gs:///run")


def test_a_missing_bucket_is_one_line():
  gcs_server.start()
  with pytest.raises(fs.StorageError, match=r"^--run_dir gs://no-such-bucket-t5jax/run is not "
                     r"writable: bucket gs://no-such-bucket-t5jax does not exist: create it"):
    fs.check_writable("gs://no-such-bucket-t5jax/run", "--run_dir")


LATE_COMPLETION = """
import asyncio, tensorstore as ts
from t5jax import fs
promise, future = ts.Promise.new()   # a TensorStore write still in flight
loop = asyncio.new_event_loop()
async def give_up():                 # the run awaits it, then gives up (one-line error)
  asyncio.ensure_future(future)
  await asyncio.sleep(0.01)
loop.run_until_complete(give_up())
loop.close()
promise.set_result(1)                # the write completes later, into the closed loop
{other}
print("finished")
"""


@pytest.mark.parametrize("other, printed", [
    ("", False),
    # Any other unraisable error is still printed with its traceback.
    ("class C:\n  def __del__(self):\n    raise ValueError('kept')\nC()", True)],
    ids=["alone", "beside_another_error"])
def test_a_write_completing_after_the_run_gave_up_prints_no_traceback(other, printed):
  """What a storage outage left behind in the pod test's output: TensorStore completing an
  abandoned write into asyncio's closed loop printed a bare traceback after the one-line
  error. That case alone is silent."""
  done = subprocess.run([sys.executable, "-c", LATE_COMPLETION.format(other=other)],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-2000:]
  assert "Event loop is closed" not in done.stderr, done.stderr[-2000:]
  assert ("ValueError: kept" in done.stderr) == printed, done.stderr[-2000:]
