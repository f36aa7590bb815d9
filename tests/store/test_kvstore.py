"""The store's bottom layer: an unreachable GCS server, a missing bucket and a full disk are
each one line naming the location and the fix."""

import json
import os
import subprocess

import pytest

from store_fixtures import build, cli, corpus_task, gcs, write_corpus  # noqa: F401 pylint: disable=unused-import
from t5jax.data import task_store
from t5jax.store import kvstore


def test_unreachable_gcs_server_is_one_line(tmp_path):
  env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
         "T5JAX_DATA_DIR": "gs://some-bucket/data", "T5JAX_GCS_RETRIES": "2"}
  env.pop("TENSORSTORE_GCS_HTTP_URL", None)
  write_corpus(tmp_path / "c.txt", 20)
  (tmp_path / "my_c.py").write_text(
      "from t5jax.data import user_tasks\n"
      f"user_tasks.register_text_span_corruption_task('my_c', {str(tmp_path / 'c.txt')!r})\n")
  out, err = cli(["cache", "--task", "my_c", "--module", "my_c", "--workers", "0"], env,
                 cwd=tmp_path).communicate(timeout=300)
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and "gs://some-bucket/data" in last, err[-2000:]
  assert "cannot be reached" in last and "STORAGE_EMULATOR_HOST" in last, last


def test_missing_bucket_is_one_line(corpus_task, gcs, monkeypatch):
  del gcs
  monkeypatch.setenv("T5JAX_DATA_DIR", "gs://no-such-bucket-t5jax/data")
  task_store.forget()
  with pytest.raises(kvstore.StoreError, match="no-such-bucket-t5jax.*bucket does not exist"):
    task_store.ensure(corpus_task, "train")


def test_full_disk_during_a_build_is_one_line_and_keeps_committed_shards(corpus_task, tmp_path):
  disk = tmp_path / "small_disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                           capture_output=True, check=False)
  if mounted.returncode:
    pytest.skip("mounting a 96 KB tmpfs needs root: " + mounted.stderr.decode().strip())
  try:
    location = str(disk / "store")
    with pytest.raises(kvstore.StoreError, match=r"small_disk/store.*the disk is full") as e:
      build(corpus_task, location)
    assert "\n" not in str(e.value)
    committed = os.listdir(os.path.join(location, "commits"))
    assert committed and not os.path.exists(os.path.join(location, "manifest.json"))
    records = [json.loads(open(os.path.join(location, "commits", c)).read()) for c in committed]
    assert all(r["num_examples"] > 0 for r in records)
  finally:
    subprocess.run(["umount", str(disk)], check=False)
