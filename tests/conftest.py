"""Shared test fixtures (data): one prepared TFDS data dir for the whole test session."""

import os

import pytest


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
