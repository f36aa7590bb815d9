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
