"""TFDS datasets prepared offline from the shipped files."""

import os
import subprocess
import sys
import textwrap

import pytest

from t5jax.data import prepare
from t5jax.data import tfds_builders

# Counts documented in t5jax/assets/README.md.
EXPECTED_SPLITS = {
    "t5jax_multi30k": {"train": 29000, "validation": 1014, "test": 1000},
    "t5jax_glue_cola": {"train": 8551, "validation": 1043},
    "t5jax_glue_sst2": {"train": 67349, "validation": 872},
    "t5jax_glue_rte": {"train": 2490, "validation": 277},
    "t5jax_scitldr": {"train": 1992, "validation": 619, "test": 618},
    "t5jax_dialogsum": {"train": 500, "validation": 500},
    "t5jax_dialogsum_next_turn": {"train": 4190, "validation": 4353},
    "t5jax_xquad_en": {"train": 991, "validation": 199},
    "t5jax_text": {"train": 10684, "validation": 564},
}


def test_split_counts_from_metadata(t5jax_data_dir):
  assert set(tfds_builders.BUILDERS) == set(EXPECTED_SPLITS)
  for name, expected in EXPECTED_SPLITS.items():
    info = prepare.prepared_builder(name).info
    assert {s: info.splits[s].num_examples for s in info.splits} == expected, name
    assert (t5jax_data_dir / name / "1.0.0" / "dataset_info.json").is_file()


def test_records_hold_the_real_text(t5jax_data_dir):
  del t5jax_data_dir
  rte = prepare.prepared_builder("t5jax_glue_rte").as_dataset(split="validation")
  labels = [int(ex["label"]) for ex in rte.as_numpy_iterator()]
  assert (labels.count(0), labels.count(1)) == (146, 131)  # entailment / not_entailment
  sst2 = prepare.prepared_builder("t5jax_glue_sst2").as_dataset(split="validation")
  labels = [int(ex["label"]) for ex in sst2.as_numpy_iterator()]
  assert (labels.count(1), labels.count(0)) == (444, 428)  # positive / negative
  scitldr = prepare.prepared_builder("t5jax_scitldr").as_dataset(split="validation")
  ex = next(scitldr.as_numpy_iterator())
  assert len(ex["target"]) >= 2 and ex["source"]  # Author TLDR + peer-review TLDRs.


def test_prepared_data_is_not_prepared_again(t5jax_data_dir):
  info_file = t5jax_data_dir / "t5jax_xquad_en" / "1.0.0" / "dataset_info.json"
  before = info_file.stat().st_mtime_ns
  prepare._prepared.clear()  # Forget the in-process memo: look at the disk again.
  prepare.prepared_builder("t5jax_xquad_en")
  assert info_file.stat().st_mtime_ns == before


def test_two_processes_prepare_one_dataset(tmp_path):
  script = textwrap.dedent("""
      from t5jax.data import prepare
      b = prepare.prepared_builder("t5jax_glue_rte")
      print(b.info.splits["train"].num_examples)
  """)
  env = {**os.environ, "T5JAX_DATA_DIR": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
  procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "2490"
  versions = [p.name for p in (tmp_path / "t5jax_glue_rte").iterdir()]
  assert versions == ["1.0.0"]  # No leftover incomplete directories.


def test_unknown_dataset_error_is_one_line():
  with pytest.raises(ValueError, match=r"^unknown shipped dataset 't5jax_nope'; expected one"):
    prepare.prepared_builder("t5jax_nope")
