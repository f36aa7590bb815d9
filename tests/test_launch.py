"""The launch scripts: bash syntax, usage, and dry runs that print the right commands.

Nothing here needs gcloud, sbatch or kubectl: every script has a dry-run mode, and
the commands it would run are fakes on PATH that fail loudly if ever called. The
`t5jax train` lines the scripts print are parsed with t5jax's own CLI parser, so a
renamed flag fails here rather than on a pod.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest
import yaml

from t5jax.cli import args as cli_args, main as cli

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_pod.sh", "gpu_single_host.sh", "slurm_multinode.sbatch", "k8s_render.sh"]
JAX_VERSION = "0.10.2"  # pyproject's lower bound, which setup installs


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH directory whose gcloud/kubectl/srun/sbatch record a call and fail."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "kubectl", "srun", "sbatch"):
    _write_exe(bin_dir / tool, f'#!/bin/sh\necho "$0 $*" >> "{tmp_path}/CALLED"\nexit 99\n')
  # scontrol only answers questions; the SLURM script asks it even in a dry run.
  _write_exe(bin_dir / "scontrol",
             '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\necho node1\necho node2\n')
  return bin_dir


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(0o755)


def _run(script, *args, env=None, fake_bin=None, check=True):
  """Runs launch/SCRIPT with a minimal environment (plus `env`)."""
  path = f"{fake_bin}:{os.environ['PATH']}" if fake_bin else os.environ["PATH"]
  full_env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "LC_ALL": "C"}
  full_env.update(env or {})
  result = subprocess.run(["bash", str(LAUNCH / script), *args], env=full_env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  if fake_bin:
    assert not (fake_bin.parent / "CALLED").exists(), "a dry run ran a real command"
  return result


def _train_args(words):
  """Parses the words after `t5jax` with t5jax's CLI; returns (args, gin bindings)."""
  assert words[0] == "train", words
  bindings, rest = cli._split_gin_flags(words)
  return cli_args.parser().parse_args(rest), bindings


def _after_t5jax(words):
  """The words after the `t5jax` (or `.../bin/t5jax`) that is followed by `train`."""
  index = next(i for i in range(len(words) - 1)
               if os.path.basename(words[i]) == "t5jax" and words[i + 1] == "train")
  return words[index + 1:]


@pytest.fixture
def fake_t5jax(fake_bin):
  """A stand-in for t5jax that prints its arguments as one JSON list per call."""
  path = fake_bin / "fake-t5jax"
  _write_exe(path, f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  return str(path)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True, timeout=30)


@pytest.mark.parametrize("script", SCRIPTS)
def test_strict_mode_and_usage(script):
  text = (LAUNCH / script).read_text()
  assert "set -euo pipefail" in text
  assert "DRY_RUN" in text and "--dry-run" in text
  result = _run(script, "--help")
  assert result.stdout.startswith("usage:")


def test_tpu_run_is_one_command_on_every_worker(fake_bin):
  env = {"DRY_RUN": "1", "RUN_DIR": "gs://bucket/run", "TPU_NAME": "pod", "ZONE": "z1"}
  out = _run("tpu_pod.sh", "run", "--gin.TrainConfig.batch_size=256",
             "--gin.LossConfig.task_weights={'multi30k_en_de': 2.0}",
             env=env, fake_bin=fake_bin).stdout
  (line,) = out.splitlines()
  words = shlex.split(line)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in words and "--zone=z1" in words
  (command,) = [w[len("--command="):] for w in words if w.startswith("--command=")]
  remote = shlex.split(command)
  assert "T5JAX_DISTRIBUTED=auto" in remote
  args, bindings = _train_args(_after_t5jax(remote))
  assert args.run_dir == "gs://bucket/run"
  assert args.gin_file == ["runs/pretrain.gin", "models/t5_1_1_base.gin", "mesh/fsdp.gin"]
  assert bindings == ["TrainConfig.batch_size=256",
                      "LossConfig.task_weights={'multi30k_en_de': 2.0}"]
  assert args.coordinator_address is None  # the pod is auto-detected


def test_tpu_lifecycle_dry_run(fake_bin):
  env = {"RUN_DIR": "gs://b/r", "ACCELERATOR_TYPE": "v4-64", "TMPDIR": str(fake_bin.parent)}
  create = _run("tpu_pod.sh", "--dry-run", "create", env=env, fake_bin=fake_bin).stdout
  assert "gcloud compute tpus tpu-vm create t5jax-pod" in create
  assert "--accelerator-type=v4-64" in create and "--version=tpu-ubuntu2204-base" in create
  setup = _run("tpu_pod.sh", "--dry-run", "setup", env=env, fake_bin=fake_bin).stdout
  assert "tpu-vm scp" in setup and "--worker=all" in setup
  assert "pip install -q -e ./t5jax 'jax[tpu]==%s'" % JAX_VERSION in setup
  assert not (fake_bin.parent / "t5jax-src-t5jax-pod.tgz").exists()  # tar printed, not run
  stop = _run("tpu_pod.sh", "--dry-run", "stop", env=env, fake_bin=fake_bin).stdout
  assert "pkill -TERM -f '[t]5jax train'" in stop
  delete = _run("tpu_pod.sh", "--dry-run", "delete", env=env, fake_bin=fake_bin).stdout
  assert "gcloud compute tpus tpu-vm delete t5jax-pod --zone=us-central2-b --quiet" in delete


def test_tpu_multislice_uses_a_queued_resource(fake_bin):
  env = {"DRY_RUN": "1", "NUM_SLICES": "2", "RUN_DIR": "gs://b/r",
         "REPO_URL": "https://example.com/t5jax.git", "REPO_REF": "v1.0"}
  create = _run("tpu_pod.sh", "create", env=env, fake_bin=fake_bin).stdout
  assert "queued-resources create t5jax-pod" in create and "--node-count=2" in create
  setup = _run("tpu_pod.sh", "setup", env=env, fake_bin=fake_bin).stdout
  assert "--node=all --worker=all" in setup
  assert "git clone -q https://example.com/t5jax.git t5jax" in setup and "v1.0" in setup
  run = _run("tpu_pod.sh", "run", env=env, fake_bin=fake_bin)
  assert "queued-resources ssh t5jax-pod" in run.stdout and "t5jax train" in run.stdout
  assert "multislice" in run.stderr  # warns: no multislice mesh in GIN_ARGS


@pytest.mark.parametrize("command,extra_env", [
    ("setup", {}), ("setup", {"REPO_URL": "https://example.com/t5jax.git"}),
    ("run", {}), ("run", {"DETACH": "1"}), ("stop", {})])
def test_tpu_remote_commands_are_valid_shell(fake_bin, command, extra_env):
  env = {"DRY_RUN": "1", "RUN_DIR": "gs://b/r", **extra_env}
  args = ["--gin.A.b=\"it's\""] if command == "run" else []
  out = _run("tpu_pod.sh", command, *args, env=env, fake_bin=fake_bin)
  (remote,) = [w[len("--command="):] for line in out.stdout.splitlines()
               for w in shlex.split(line) if w.startswith("--command=")]
  subprocess.run(["bash", "-n", "-c", remote], check=True, timeout=30)


def test_tpu_run_needs_a_run_dir(fake_bin):
  result = _run("tpu_pod.sh", "--dry-run", "run", fake_bin=fake_bin, check=False)
  assert result.returncode == 2 and "RUN_DIR" in result.stderr


def test_gpu_single_host_dry_run(fake_bin):
  env = {"NUM_GPUS": "2", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  out = _run("gpu_single_host.sh", "--dry-run", "run", "--gin.TrainConfig.num_steps=10",
             env=env, fake_bin=fake_bin).stdout
  lines = out.splitlines()
  assert lines[0] == f"cd {REPO}"
  words = shlex.split(lines[1])
  assert words[0] == "env"
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90" in words
  assert "CUDA_VISIBLE_DEVICES=0,1" in words
  (xla_flags,) = [w for w in words if w.startswith("XLA_FLAGS=")]
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in xla_flags
  assert xla_flags.endswith("--xla_dump_to=/tmp/x")  # the user's flags come last and win
  args, bindings = _train_args(_after_t5jax(words))
  assert args.run_dir == "runs/gpu" and bindings == ["TrainConfig.num_steps=10"]
  assert args.process_id is None  # one process, no jax.distributed


def test_gpu_single_host_setup_pins_jax(fake_bin):
  out = _run("gpu_single_host.sh", "setup", env={"DRY_RUN": "1"}, fake_bin=fake_bin).stdout
  assert f'pip install -q -e . "jax[cuda12]=={JAX_VERSION}"' in out


def _slurm_env(**extra):
  env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2",
         "SLURM_NODEID": "0", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_CPUS_ON_NODE": "32",
         "RUN_DIR": "/shared/runs/x", "COORDINATOR_PORT": "12345"}
  env.update(extra)
  return env


def test_slurm_sbatch_header():
  text = (LAUNCH / "slurm_multinode.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=" in text
  assert "scontrol show hostnames" in text


def test_slurm_dry_run_passes_explicit_distributed_flags(fake_bin):
  out = _run("slurm_multinode.sbatch", "--dry-run", "--gin.TrainConfig.batch_size=64",
             env=_slurm_env(), fake_bin=fake_bin).stdout
  assert "--coordinator_address node1:12345 --num_processes 2 --process_id 0" in out
  assert "--coordinator_address node1:12345 --num_processes 2 --process_id 1" in out
  node1, node2, srun = out.splitlines()
  assert node1.startswith("# node1: ") and node2.startswith("# node2: ")
  args, bindings = _train_args(_after_t5jax(shlex.split(node2[len("# node2: "):])))
  assert (args.coordinator_address, args.num_processes, args.process_id) == ("node1:12345", 2, 1)
  assert bindings == ["TrainConfig.batch_size=64"] and args.run_dir == "/shared/runs/x"
  words = shlex.split(srun)
  assert words[0] == "srun" and "--ntasks-per-node=1" in words and "--nodes=2" in words
  assert "--cpus-per-task=32" in words
  assert 'exec "$@" --process_id "$SLURM_NODEID"' in words  # read on each node


def test_slurm_each_node_gets_its_process_id(fake_bin, fake_t5jax):
  # A fake srun that runs the task as nodes 0 and 1 would.
  _write_exe(fake_bin / "srun", '#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\n'
             'for i in 0 1; do SLURM_NODEID=$i "$@"; done\n')
  result = _run("slurm_multinode.sbatch", env=_slurm_env(T5JAX=fake_t5jax), fake_bin=fake_bin)
  ran = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
  assert len(ran) == 2
  for process_id, words in enumerate(ran):
    args, _ = _train_args(words)
    assert (args.coordinator_address, args.num_processes, args.process_id) == (
        "node1:12345", 2, process_id)


def test_slurm_outside_a_job_is_an_error(fake_bin):
  result = _run("slurm_multinode.sbatch", "--dry-run", env={"RUN_DIR": "/x"},
                fake_bin=fake_bin, check=False)
  assert result.returncode == 2 and "sbatch" in result.stderr


def _k8s_env(**extra):
  env = {"IMAGE": "ghcr.io/example/t5jax:cuda", "RUN_DIR": "gs://bucket/run", "NUM_HOSTS": "4",
         "NAME": "t5-xl"}
  env.update(extra)
  return env


def _pod_spec(manifest):
  return manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def test_k8s_render_prints_a_jobset(fake_bin):
  # XLA_FLAGS of the shell that renders (here: a CPU test setting) stay out of the pods.
  out = _run("k8s_render.sh", "--dry-run", "--gin.TrainConfig.batch_size=512",
             env=_k8s_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
             fake_bin=fake_bin).stdout
  (manifest,) = list(yaml.safe_load_all(out))
  assert manifest["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and manifest["kind"] == "JobSet"
  assert manifest["spec"]["network"] == {"enableDNSHostnames": True, "subdomain": "t5-xl",
                                         "publishNotReadyAddresses": True}
  (workers,) = manifest["spec"]["replicatedJobs"]
  assert workers["name"] == "workers" and workers["replicas"] == 1
  job = workers["template"]["spec"]
  assert job["parallelism"] == job["completions"] == 4 and job["completionMode"] == "Indexed"
  (container,) = _pod_spec(manifest)["containers"]
  assert container["image"] == "ghcr.io/example/t5jax:cuda"
  assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
  env = {e["name"]: e["value"] for e in container["env"]}
  assert env["COORDINATOR_ADDRESS"] == "t5-xl-workers-0-0.t5-xl:1234"
  assert env["NUM_PROCESSES"] == "4"
  assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"]
  assert "host_platform" not in env["XLA_FLAGS"]
  assert '--process_id "$JOB_COMPLETION_INDEX"' in container["args"][0]


def test_k8s_container_command_runs_as_pod_3(fake_bin, fake_t5jax):
  out = _run("k8s_render.sh", "--gin.LossConfig.task_weights={'a': 2.0}",
             env=_k8s_env(T5JAX=fake_t5jax), fake_bin=fake_bin).stdout
  (container,) = _pod_spec(yaml.safe_load(out))["containers"]
  env = {e["name"]: e["value"] for e in container["env"]}
  env.update(PATH=os.environ["PATH"], JOB_COMPLETION_INDEX="3")  # what Kubernetes sets
  result = subprocess.run(container["command"] + container["args"], env=env,
                          capture_output=True, text=True, check=True, timeout=30)
  args, bindings = _train_args(json.loads(result.stdout))
  assert (args.coordinator_address, args.num_processes, args.process_id) == (
      "t5-xl-workers-0-0.t5-xl:1234", 4, 3)
  assert bindings == ["LossConfig.task_weights={'a': 2.0}"]


def test_k8s_render_tpu(fake_bin):
  env = _k8s_env(ACCELERATOR="tpu", TPU_ACCELERATOR="tpu-v5p-slice", TPU_TOPOLOGY="4x4x4",
                 NUM_HOSTS="16")
  manifest = yaml.safe_load(_run("k8s_render.sh", env=env, fake_bin=fake_bin).stdout)
  pod = _pod_spec(manifest)
  assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": 4}
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                 "cloud.google.com/gke-tpu-topology": "4x4x4"}
  assert manifest["metadata"]["annotations"] == {
      "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}


def test_k8s_apply_and_delete_dry_run(fake_bin, tmp_path):
  manifest_path = tmp_path / "jobset.yaml"
  env = _k8s_env(DRY_RUN="1", NAMESPACE="ml", MANIFEST=str(manifest_path))
  out = _run("k8s_render.sh", "apply", env=env, fake_bin=fake_bin).stdout
  assert out.strip() == f"kubectl -n ml apply -f {manifest_path}"
  assert yaml.safe_load(manifest_path.read_text())["kind"] == "JobSet"
  out = _run("k8s_render.sh", "delete", env=env, fake_bin=fake_bin).stdout
  assert out.strip() == "kubectl -n ml delete jobset t5-xl"


def test_k8s_render_refuses_unfilled_placeholders(fake_bin, tmp_path):
  template = tmp_path / "template.yaml"
  template.write_text("name: ${NAME}\nimage: ${NOT_A_VARIABLE}\n")
  result = _run("k8s_render.sh", env=_k8s_env(TEMPLATE=str(template)), fake_bin=fake_bin,
                check=False)
  assert result.returncode == 2 and "${NOT_A_VARIABLE}" in result.stderr
  result = _run("k8s_render.sh", env=_k8s_env(IMAGE=""), fake_bin=fake_bin, check=False)
  assert result.returncode == 2 and "IMAGE" in result.stderr
