"""The filter that keeps the libraries' C++ log lines off a command's stderr."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# Lines as TensorFlow 2.21 and jaxlib print them on a CPU machine, and ours.
LIBRARY = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796100671.649994    4318 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796100671.650312    4318 cudart_stub.cc:31] Could not find cuda drivers",
    "E0000 00:00:1796100675.447312    4318 cuda_platform.cc:52] failed call to cuInit: (303)",
    "W1201 12:00:01.000001   77 computation_placer.cc:177] computation placer already registered",
    # libtpu 0.0.42 loaded on a machine without a TPU (t5jax compile --topology).
    "Failed to find host bounds for accelerator type: WARNING: could not determine TPU "
    "accelerator type, please set env var `TPU_ACCELERATOR_TYPE` manually, otherwise "
    "libtpu.so may not properly initialize.",
    "WARNING: Logging before InitGoogle() is written to STDERR",
    "=== Source Location Trace: === ",
    "learning/45eac/tfrc/runtime/libtpu_init_utils.cc:327",
]
OURS = ["Loaded runs/demo: d_model 128, 2+2 layers", "error: --input x.txt does not exist",
        "F0000 00:00:1796100675.447312    4318 check.cc:1] Check failed: fatal errors pass",
        "Info: a line that merely starts with I"]

# Writes to descriptor 2 directly, as C++ does, then through Python's sys.stderr.
SCRIPT = """
import os, sys
from t5jax.cli import lib_logs
lib_logs.quiet_stderr()
for line in sys.argv[1:]:
  os.write(2, (line + "\\n").encode())
sys.stderr.write("no newline at the end")
"""


@pytest.mark.parametrize("shown", [False, True])
def test_library_lines_are_dropped_unless_asked_for(shown):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("T5JAX_LIB_LOGS", None)
  if shown:
    env["T5JAX_LIB_LOGS"] = "1"
  mixed = [line for pair in zip(LIBRARY, OURS) for line in pair] + LIBRARY[len(OURS):]
  result = subprocess.run([sys.executable, "-c", SCRIPT, *mixed], env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0
  expected = mixed if shown else [line for line in mixed if line not in LIBRARY]
  assert result.stderr == "\n".join(expected) + "\nno newline at the end"


def test_a_library_line_written_in_pieces_is_dropped_whole():
  # libtpu writes its accelerator-type warning in two writes; the first piece alone must
  # not go out before the filter sees that the line is libtpu's.
  script = """
import os, time
from t5jax.cli import lib_logs
lib_logs.quiet_stderr()
os.write(2, b"Failed to find host bounds for accelerator type: ")
time.sleep(0.2)
os.write(2, b"WARNING: could not determine TPU accelerator type, please set env var\\n")
os.write(2, b"Found 4 shards\\n")
"""
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("T5JAX_LIB_LOGS", None)
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0 and result.stderr == "Found 4 shards\n"
