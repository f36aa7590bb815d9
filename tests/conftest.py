"""Shared test fixtures (data): one prepared TFDS data dir for the whole test session."""

import os
import sys

import pytest

# Test modules live in folders that mirror the package (tests/train/, tests/decode/, ...);
# their shared helpers (synthetic.py) stay here.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def t5jax_data_dir(tmp_path_factory):
  """Prepares every shipped TFDS dataset once per session and returns the data dir.

  Uses `$T5JAX_DATA_DIR` when set (so repeated runs reuse it), else a session temp dir.
  """
  if not os.environ.get("T5JAX_DATA_DIR"):
    os.environ["T5JAX_DATA_DIR"] = str(tmp_path_factory.mktemp("t5jax_tfds"))
  from t5jax.data import prepare, tfds_builders  # pylint: disable=g-import-not-at-top
  for name in tfds_builders.BUILDERS:
    prepare.prepared_builder(name)
  return prepare.data_dir()


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Every test starts and ends with no gin bindings: a test that runs the CLI in-process
  binds configurables (e.g. `OptimizerConfig.learning_rate`) that would otherwise change
  the defaults a later test sees."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()


# Test files that run jax.distributed jobs (several t5jax processes, gloo collectives): one
# xdist unit, so two such jobs never compete for the 2 cores at once (a job whose processes
# are starved can miss each other's collectives), started first because it is the longest.
DISTRIBUTED_JOBS = "tests/parallel/test_pod_run.py", "tests/parallel/test_multiprocess.py"
# Then the other long files, longest first (a cold 2-core run, 2026-12-06), so that no long
# file is the last to start; every other file keeps its place after them.
LONGEST_FIRST = (*DISTRIBUTED_JOBS, "tests/test_readme.py", "tests/train/test_checkpoint.py",
                 "tests/train/test_fit_search.py", "tests/decode/test_sharded_inference.py",
                 "tests/cli/test_task_parameters_cli.py", "tests/model/test_task_parameters.py",
                 "tests/decode/test_predictor.py", "tests/cli/test_train_cli.py")


def _file_of(nodeid: str) -> str:
  path = nodeid.split("::", 1)[0]
  return path if path.startswith("tests/") else f"tests/{path}"


def pytest_collection_modifyitems(items):
  rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(_file_of(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config, log):
  """`--dist loadfile` (a file's tests in one worker, its module fixtures built once), with
  the jax.distributed files as one unit and units handed out in collection order."""
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top
  if config.getvalue("dist") != "loadfile":
    return None

  class Scheduling(LoadFileScheduling):

    def _split_scope(self, nodeid):
      path = super()._split_scope(nodeid)
      return DISTRIBUTED_JOBS[0] if _file_of(path) in DISTRIBUTED_JOBS else path

  config.option.loadscopereorder = False  # xdist would order units by their test count
  return Scheduling(config, log)
