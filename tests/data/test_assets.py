"""Shipped assets and the vocabulary."""

import gzip
import hashlib

import pytest

from t5jax.data import assets
from t5jax.data import vocab


def test_shipped_files_match_upstream_checksums():
  lines = (assets.ASSETS_DIR / "SHA256SUMS.uncompressed").read_text().splitlines()
  assert len(lines) == 28
  for line in lines:
    digest, relative = line.split()
    path = assets.asset_path(relative)
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest, relative


def test_assets_stay_small():
  total = sum(p.stat().st_size for p in assets.ASSETS_DIR.rglob("*") if p.is_file())
  assert total < 12 * 2**20


def test_missing_asset_names_the_path():
  with pytest.raises(FileNotFoundError, match=r"assets/glue/nope\.tsv\.gz is missing"):
    assets.asset_path("glue/nope.tsv.gz")


def test_vocabulary_is_t5s():
  v = vocab.get_vocabulary()
  assert v is vocab.get_vocabulary()  # Cached.
  assert v.vocab_size == vocab.VOCAB_SIZE == 32100
  assert vocab.EMBEDDING_VOCAB_SIZE == 32128 and vocab.EMBEDDING_VOCAB_SIZE % 128 == 0
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  # The ids Hugging Face's T5Tokenizer gives (without EOS).
  assert v.encode("translate English to German: The house is wonderful.") == [
      13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5]
  assert v.decode([32099]) == "<extra_id_0>"
  assert v.decode([32000]) == "<extra_id_99>"
