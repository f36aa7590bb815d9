"""Keeps the libraries' own logs (TensorFlow, XLA, CUDA probing, gRPC, absl) off the
terminal of a `t5jax` command, so that the user sees t5jax's lines only.

TensorFlow 2.21 and jaxlib log from C++ through absl before anything calls
`absl::InitializeLog()`, and such lines ignore TF_CPP_MIN_LOG_LEVEL: a CPU machine
prints `E0000 ... failed call to cuInit` and `Could not find cuda drivers` on every
command. They are written straight to file descriptor 2, so the only place to drop
them is there: `quiet_stderr` points descriptor 2 at a pipe read by a small forked
filter process, which forwards every line except absl-format lines of severity
I, W and E (F, a fatal error, always passes). A separate process, not a thread,
so that the last lines before a crash still reach the terminal.

T5JAX_LIB_LOGS=1 turns all of this off and shows the libraries' logs.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import time

ENV = "T5JAX_LIB_LOGS"
# "I0000 00:00:1796100671.649994    4318 port.cc:153] ..." and absl's pre-init banner; and
# what libtpu says when loaded on a machine without a TPU (`t5jax compile --topology`):
# its accelerator-type warning, its pre-InitGoogle banner, and a source-location trace.
_LIBRARY_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s\]]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|WARNING: Logging before InitGoogle\(\) is written to STDERR"
    rb"|Failed to find host bounds for accelerator type: WARNING: could not determine TPU"
    rb"|=== Source Location Trace: ===\s*$"
    rb"|learning/[\w./-]+\.cc:\d+\s*$)")


def shown() -> bool:
  return os.environ.get(ENV, "").strip() not in ("", "0")


# How library lines that are not glog's begin: a partial line that may still become one is
# held back until its end comes (libtpu writes its accelerator-type warning in pieces).
_LIBRARY_STARTS = (b"WARNING", b"Failed to find host bounds", b"=== Source Location",
                   b"learning/")


def is_library_line(line: bytes) -> bool:
  return bool(_LIBRARY_LINE.match(line))


def _may_become_library_line(partial: bytes) -> bool:
  return partial[:1] in b"IWE" or any(
      start.startswith(partial) or partial.startswith(start) for start in _LIBRARY_STARTS)


def quiet_environment() -> None:
  """Log levels the libraries read at import; the user's own settings win."""
  if shown():
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _forward(read_fd: int, write_fd: int) -> None:
  """The filter process: copies lines from the pipe to the real stderr until EOF."""
  pending = b""
  while chunk := os.read(read_fd, 65536):
    *lines, pending = (pending + chunk).split(b"\n")
    out = b"".join(line + b"\n" for line in lines if not is_library_line(line))
    # A partial line (a prompt, a progress bar) goes out at once unless it may
    # still turn out to be a library line.
    if pending and not _may_become_library_line(pending):
      out, pending = out + pending, b""
    if out:
      os.write(write_fd, out)
  if pending and not is_library_line(pending):
    os.write(write_fd, pending)


def quiet_stderr() -> None:
  """Filters library log lines out of this process's stderr (see the module doc).

  Call once, at the start of a command line program, before TensorFlow or JAX is
  imported and before any thread starts (it forks).
  """
  quiet_environment()
  if shown() or not hasattr(os, "fork"):
    return
  sys.stderr.flush()
  try:
    real_stderr = os.dup(2)
  except OSError:  # no stderr at all: nothing to keep clean
    return
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:  # the filter
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the filter
    # lives on until the command itself has said its last words (EOF on the pipe).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
      signal.signal(sig, signal.SIG_IGN)
    os.close(write_fd)
    os.close(0)
    os.close(1)  # `t5jax infer | head` must see EOF when the command ends
    try:
      _forward(read_fd, real_stderr)
    finally:
      os._exit(0)  # no atexit handlers or buffers of the parent's
  os.close(read_fd)
  os.dup2(write_fd, 2)
  os.close(write_fd)

  def drain():
    """Closes the pipe and waits for the filter, so that no line is lost at exit."""
    sys.stderr.flush()
    os.dup2(real_stderr, 2)
    # A child process of the command that still holds the pipe would keep the
    # filter alive; do not wait for it for long.
    for _ in range(200):
      try:
        if os.waitpid(pid, os.WNOHANG)[0]:
          return
      except ChildProcessError:
        return
      time.sleep(0.01)

  atexit.register(drain)
