"""The T5 SentencePiece vocabulary shipped with t5jax."""

import functools

import seqio

from t5jax.data import assets

EXTRA_IDS = 100
# 32,000 pieces + 100 sentinels.
VOCAB_SIZE = 32100
# T5 checkpoints pad the embedding table to a multiple of 128 so it shards evenly.
EMBEDDING_VOCAB_SIZE = 32128


@functools.cache
def get_vocabulary() -> seqio.SentencePieceVocabulary:
  """Returns the T5 vocabulary (32,000 pieces + 100 extra ids = 32,100)."""
  path = assets.asset_path("t5_spm/spiece.model")
  return seqio.SentencePieceVocabulary(str(path), extra_ids=EXTRA_IDS)
