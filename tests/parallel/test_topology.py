"""Cloud TPU accelerator types to slices, and the train step compiled by libtpu for one."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from t5jax.parallel import topology

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_plugins.xla_cuda12") is not None


@pytest.mark.parametrize("name, chips, shape, hosts", [
    ("v5p-8", 4, (2, 2, 1), 1), ("v5p-16", 8, (2, 2, 2), 2), ("v5p-128", 64, (4, 4, 4), 16),
    ("v4-32", 16, (2, 2, 4), 4), ("v5litepod-4", 4, (2, 2), 1), ("v5litepod-8", 8, (2, 4), 2),
    ("v5litepod-16", 16, (4, 4), 4), ("v6e-256", 256, (16, 16), 64)])
def test_accelerator_types_name_their_slices(name, chips, shape, hosts):
  s = topology.slice_of(name)
  assert (s.chips, s.shape, s.hosts) == (chips, shape, hosts)
  assert s.topology_name.endswith("x".join(map(str, shape)))


@pytest.mark.parametrize("name, gpus, topology_name, hosts", [
    ("h200-1", 1, "1x1x1", 1), ("h200-8", 8, "1x1x8", 1), ("h200-32", 32, "1x4x8", 4)])
def test_gpu_hosts_name_their_gpus(name, gpus, topology_name, hosts):
  s = topology.slice_of(name)
  assert (s.chips, s.topology_name, s.hosts, s.chip.platform) == (gpus, topology_name, hosts,
                                                                   "gpu")


@pytest.mark.parametrize("name", ["v5p-7", "v9-8", "v5litepod-3", "tpu", "v5p-", "h200-12",
                                  "h100-8"])
def test_unknown_type_is_one_line_with_known_examples(name):
  with pytest.raises(topology.TopologyError,
                     match=r"unknown accelerator type .* e\.g\. .*v5p-128.*h200-8"):
    topology.slice_of(name)


def _compile(args, env_extra=None, timeout=600):
  env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):
    env.pop(name, None)
  return subprocess.run([sys.executable, "-m", "t5jax", "compile", *args], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)


TINY = ["--gin_file=runs/demo.gin", "--gin.TrainConfig.model='t5_1_1_tiny'",
        "--gin.TrainConfig.batch_size=8"]


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: pip install 't5jax[tpu]'")
def test_tiny_model_compiles_for_a_v5e_slice_with_libtpu_and_fits():
  result = _compile(["--topology", "v5litepod-4", *TINY])
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["platform"] == "tpu" and report["devices"] == 4 and report["chips"] == 4
  assert report["fits"] and 0.9 < report["headroom"] < 1.0
  assert report["roofline_step_s"] > 0 and 0 < report["roofline_mfu"] <= 1.0
  assert "FITS with" in result.stdout


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: pip install 't5jax[tpu]'")
def test_a_step_over_the_chips_hbm_is_reported_as_not_fitting():
  # t5_1_1_tiny with a 2M-token batch per chip: activations far over a v5e chip's 16 GiB.
  result = _compile(["--topology", "v5litepod-4", "--gin_file=runs/demo.gin",
                     "--gin.TrainConfig.model='t5_1_1_tiny'", "--gin.TrainConfig.batch_size=4096",
                     "--gin.InputSpec.inputs_length=2048", "--gin.InputSpec.targets_length=2048"])
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert not report["fits"] and report["headroom"] < 0
  assert "DOES NOT FIT" in result.stdout


def _compile_without(package_prefix: str, args, tmp_path):
  """`t5jax compile ARGS` where no module whose name starts with `package_prefix` is found
  (a sitecustomize that hides it from importlib's find_spec)."""
  (tmp_path / "sitecustomize.py").write_text(
      "import importlib.util\n"
      "_find = importlib.util.find_spec\n"
      f"importlib.util.find_spec = lambda n, *a, **k: (None if n.startswith({package_prefix!r})"
      " else _find(n, *a, **k))\n")
  return _compile([*args, *TINY], {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})


def test_missing_libtpu_is_one_line_naming_the_extra(tmp_path):
  result = _compile_without("libtpu", ["--topology", "v5p-8"], tmp_path)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: compiling for a TPU slice needs libtpu, the TPU compiler: pip install "
      "'t5jax[tpu]' (it pins the libtpu that matches jax)")


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: pip install 't5jax[tpu]'")
def test_scanned_layers_claim_no_mfu_bound_and_libtpu_stays_quiet():
  result = _compile(["--topology", "v5litepod-4", *TINY,
                     "--gin.ModelSettings.scan_layers=True"])
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["scan_layers"] and "no MFU bound" in result.stdout
  assert "MFU at most" not in result.stdout
  assert result.stderr == "", result.stderr  # libtpu's start-up lines are filtered out


@pytest.mark.skipif(not HAS_CUDA_PLUGIN,
                    reason="jax's CUDA plugin is not installed: pip install 't5jax[gpu-aot]'")
def test_tiny_model_compiles_for_an_h200_host_without_a_gpu():
  result = _compile(["--topology", "h200-8", *TINY])
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["platform"] == "gpu" and report["device_kind"] == "NVIDIA H200"
  assert report["devices"] == 8 and report["mesh"]["data"] == 8
  assert report["fits"] and report["hbm_bytes_per_chip"] == 150_109_880_320
  assert 0 < report["temp_size_in_bytes"] < 2**30 and report["roofline_compute_s"] > 0
  assert "the CUDA compiler" in result.stdout and "no cost analysis" in result.stdout
  assert result.stderr == "", result.stderr


def test_missing_cuda_plugin_is_one_line_naming_the_extra(tmp_path):
  result = _compile_without("jax_plugins.xla_cuda", ["--topology", "h200-8"], tmp_path)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: compiling for a GPU host needs jax's CUDA plugin and ptxas: pip install "
      "'t5jax[gpu-aot]' (it pins the plugin that matches jax)")


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: pip install 't5jax[tpu]'")
def test_a_step_traced_for_a_tpu_slice_leaves_out_the_cpu_only_paths():
  # The single-CPU-device paths (attention row by row, [out, in] decode kernels) are for
  # this host's CPU; a program traced under a TPU slice's mesh is built for the TPU, even on
  # a host whose one device is a CPU (it was not: libtpu then compiled the row loop, and
  # reported 93 GiB a chip for T5 1.1 base where the step needs far less).
  script = """
import jax, numpy as np
from t5jax.model import devices
from t5jax.parallel import partitioning, topology
seen = {}
def probe(name):
  def f(x):
    seen[name] = devices.on_one_cpu_device()
    return x
  return f
jax.jit(probe("host")).lower(jax.ShapeDtypeStruct((4,), np.float32))
tpu = jax.sharding.Mesh(np.array(topology.devices(topology.slice_of("v5litepod-4"))), ("d",))
with partitioning.sharding_context(tpu):
  jax.jit(probe("tpu")).lower(jax.ShapeDtypeStruct((4,), np.float32))
cpu = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",))
with partitioning.sharding_context(cpu):
  jax.jit(probe("cpu mesh")).lower(jax.ShapeDtypeStruct((4,), np.float32))
print(seen)
"""
  env = {**os.environ, "PYTHONPATH": REPO}
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):
    env.pop(name, None)
  result = subprocess.run([sys.executable, "-c", "import t5jax\n" + script], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == (
      "{'host': True, 'tpu': False, 'cpu mesh': True}")
