"""The repetition guards against Hugging Face's logits processors, on random
histories with few distinct tokens (so that n-grams really repeat)."""
import jax
import numpy as np
import pytest
import torch
import transformers

from t5jax.decode import decoding, logits_processors

B, L, V = 6, 12, 7


def _histories(seed=0):
  rng = np.random.default_rng(seed)
  history_bl = rng.integers(0, 4, (B, L)).astype(np.int32)  # tokens 0-3 of 7: many repeats
  scores_bv = rng.normal(size=(B, V)).astype(np.float32) * 3.0  # both signs
  return history_bl, scores_bv


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_ban_matches_hugging_face(n):
  history_bl, scores_bv = _histories(n)
  ban = jax.jit(logits_processors.ban_repeated_ngrams, static_argnums=3)
  hf = transformers.NoRepeatNGramLogitsProcessor(n)
  banned = 0
  for length in range(1, L + 1):
    ours = np.asarray(ban(scores_bv, history_bl, length, n))
    theirs = hf(torch.from_numpy(history_bl[:, :length]).long(),
                torch.from_numpy(scores_bv.copy())).numpy()
    np.testing.assert_array_equal(ours, theirs, err_msg=f"length {length}")
    banned += np.isinf(theirs).sum()
  assert banned > 10  # a real comparison: many tokens were banned


@pytest.mark.parametrize("penalty", [1.5, 0.7])
def test_repetition_penalty_matches_hugging_face(penalty):
  history_bl, scores_bv = _histories()
  hf = transformers.RepetitionPenaltyLogitsProcessor(penalty)
  for length in (1, 5, L):
    ours = np.asarray(logits_processors.penalize_repeats(scores_bv, history_bl, length, penalty))
    theirs = hf(torch.from_numpy(history_bl[:, :length]).long(),
                torch.from_numpy(scores_bv.copy())).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert (ours != scores_bv).any()


def test_guard_counts_the_start_token():
  # Output so far [5] after start 0: with n=2 the bigram (0, 5) exists; with the
  # suffix 5 nothing is banned yet, but token 0 is already penalised.
  guard = logits_processors.RepetitionGuard(no_repeat_ngram_size=2, repetition_penalty=2.0)
  out_bl = np.array([[5, 0, 0]], np.int32)
  scores = np.asarray(guard(np.ones((1, V), np.float32), out_bl, 1))
  np.testing.assert_array_equal(scores[0], [0.5, 1, 1, 1, 1, 0.5, 1])
  # After [5, 0]: the suffix 0 began the bigram (0, 5), so 5 is banned.
  scores = np.asarray(guard(np.ones((1, V), np.float32), out_bl, 2))
  assert np.isinf(scores[0, 5]) and np.isfinite(np.delete(scores[0], 5)).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be >= 0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
])
def test_bad_guard_options_are_one_line_errors(kwargs, message):
  with pytest.raises(ValueError, match=message) as e:
    decoding.DecodeConfig(**kwargs)
  assert "\n" not in str(e.value)


def test_guard_is_off_by_default():
  assert decoding.DecodeConfig().guard is None
  assert decoding.DecodeConfig(no_repeat_ngram_size=3).guard.no_repeat_ngram_size == 3


def test_infer_and_eval_flags_set_the_guard():
  from t5jax.cli import args as cli_args, main as cli
  for command in (["infer", "--input", "-"], ["eval", "--task", "t"]):
    args = cli_args.parser().parse_args([*command, "--checkpoint", "c", "--no_repeat_ngram_size",
                                     "3", "--repetition_penalty", "1.2"])
    assert cli._decode_config(args).guard == logits_processors.RepetitionGuard(3, 1.2)
