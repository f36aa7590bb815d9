"""UL2's mixture of denoisers: each denoiser's mean span and noise density within 5% of its
setting over 10^4 examples, S targets the exact continuation, mode tokens in the rates'
proportions, lengths within the features, bad settings one line, and the shipped task
through the batch pipeline, keyed by position."""
import numpy as np
import pytest

from t5jax.data import pipeline, ul2, vocab

VOCAB = vocab.get_vocabulary()
SENTINEL_FLOOR = VOCAB.vocab_size - VOCAB.extra_ids
STREAM = np.random.default_rng(0).integers(3, SENTINEL_FLOOR, 3_000_000).astype(np.int32)


def _examples(lengths, n, rates=ul2.DEFAULT_RATES, specs=ul2.DEFAULT_DENOISERS):
  mixture = ul2.mixture(VOCAB, *lengths, specs, rates)
  ds, normalized, window = mixture.denoisers, mixture.rates, mixture.window
  windows = len(STREAM) // window
  out = []
  for k in range(n):
    w = STREAM[(k % windows) * window:(k % windows + 1) * window]
    inputs, targets, i = ul2.ul2_example(w, 7919 * k + 3, mixture, VOCAB.vocab_size,
                                         lengths)
    out.append((inputs, targets, i, w))
  return ds, normalized, out


def _noise_and_spans(examples, i) -> tuple[int, int]:
  """Noise tokens and noise spans over the examples of denoiser i (from their targets)."""
  noise = spans = 0
  for _, targets, j, _ in examples:
    if j == i:
      sentinels = int(np.sum(targets >= SENTINEL_FLOOR))
      spans += sentinels
      noise += len(targets) - sentinels
  return noise, spans


def _assert_rates_proportions(examples, normalized) -> None:
  counts = np.bincount([i for _, _, i, _ in examples], minlength=len(normalized)) / len(examples)
  sigma = np.sqrt(normalized * (1 - normalized) / len(examples))
  assert np.all(np.abs(counts - normalized) < 4 * sigma), (counts, normalized)


@pytest.fixture(scope="module")
def made():
  return _examples((512, 512), 10_000)


def test_each_denoisers_mean_span_and_density_are_its_settings(made):
  ds, _, examples = made
  for i, d in enumerate(ds):
    if d.kind == "S":
      continue
    noise, spans = _noise_and_spans(examples, i)
    assert spans > 100, d.label
    assert abs(noise / spans / d.mean_span - 1) < 0.05, (d.label, noise / spans)
    segment_tokens = sum(d.segment for *_, j, _ in examples if j == i)
    assert abs(noise / segment_tokens / d.density - 1) < 0.05, (d.label, noise / segment_tokens)


def test_inputs_start_with_the_mode_token_and_span_targets_restore_the_segment(made):
  ds, _, examples = made
  from t5jax.data import span_corruption
  for inputs, targets, i, window in examples[:300]:
    d = ds[i]
    mode = VOCAB.decode(list(inputs[:len(d.mode_ids)]))
    assert mode == ul2.MODES[d.kind]
    body = inputs[len(d.mode_ids):]
    restored = (np.concatenate([body, targets]) if d.kind == "S" else
                span_corruption.fill_sentinels(body, targets, VOCAB.vocab_size))
    # The segment lies in the window: the prefix and its exact continuation (S), or the
    # span-corrupted tokens put back (R, X).
    n = len(restored)
    starts = [s for s in range(len(window) - n + 1) if window[s] == restored[0]]
    assert any(np.array_equal(window[s:s + n], restored) for s in starts), d.label
    if d.kind == "S":
      assert len(targets) >= 1 and len(body) >= 1


def test_modes_come_in_the_rates_proportions():
  rates = (4, 1, 1, 1, 1, 1, 3)
  _, normalized, examples = _examples((512, 512), 10_000, rates=rates)
  _assert_rates_proportions(examples, normalized)
  assert abs(normalized[0] - 4 / 12) < 1e-12


@pytest.mark.parametrize("lengths", [(512, 512), (512, 256), (1024, 256), (600, 700)])
def test_lengths_never_exceed_the_features(lengths):
  ds, _, examples = _examples(lengths, 2_000)
  for inputs, targets, i, _ in examples:
    assert len(inputs) + 1 <= lengths[0] and len(targets) + 1 <= lengths[1], ds[i].label
  # Each span denoiser fills the inputs as span corruption does (to within its spans'
  # stochastic count), unless T5's 100 sentinels or the targets' length stop it first.
  fill = {i: max(len(x) for x, _, j, _ in examples if j == i) for i in range(len(ds))}
  assert fill[0] + 1 >= lengths[0] - 1, fill


def test_mode_tokens_decode_back_unchanged():
  for mode in ul2.MODES.values():
    assert VOCAB.decode(VOCAB.encode(mode)) == mode
    assert VOCAB.decode(VOCAB.encode(f"{mode} The cat sat.")) == f"{mode} The cat sat."


@pytest.mark.parametrize("specs, rates, message", [
    ((("R", 3.0, 0.0),), (1,), r"R\(mean span 3, density 0\): the noise density must be in"),
    ((("X", 3.0, 1.5),), (1,), r"X\(mean span 3, density 1.5\): the noise density"),
    ((("R", 3.0, 0.15),), (0,), r"rates \[0\] must be >= 0 and sum to a positive number"),
    ((("R", 3.0, 0.15), ("S", 0, 0)), (1, -1), r"must be >= 0"),
    ((("R", 3.0, 0.15),), (1, 1), r"one rate per denoiser: 1 denoisers, 2 rates"),
    ((("X", 64.0, 0.15),), (1,), r"X\(mean span 64, density 0.15\) cannot fit "
                                 r"inputs_length=128 / targets_length=128: .* at least 427"),
    ((("Q", 3.0, 0.15),), (1,), r"kind 'Q' is not one of R, X, S"),
])
def test_bad_settings_are_one_line_errors(specs, rates, message):
  with pytest.raises(ValueError, match=message) as e:
    ul2.mixture(VOCAB, 128, 128, specs, rates)
  assert "\n" not in str(e.value)


def test_shipped_task_through_the_batch_pipeline_is_keyed_by_position(t5jax_data_dir):
  spec = pipeline.InputSpec(mixture_or_task="text_ul2", inputs_length=512,
                            targets_length=512, pack=False)
  first = pipeline.make_batches(spec, 8, 0, 1)
  batches = [next(first) for _ in range(3)]
  state = first.state()
  again = pipeline.make_batches(spec, 8, 0, 1)
  np.testing.assert_array_equal(next(again)["encoder_input_tokens"],
                                batches[0]["encoder_input_tokens"])
  # From a saved position: the same next batch as the uninterrupted stream.
  resumed = pipeline.make_batches(spec, 8, 0, 1, state=state)
  np.testing.assert_array_equal(next(resumed)["decoder_target_tokens"],
                                next(first)["decoder_target_tokens"])
  modes = {VOCAB.decode(list(row[:4])) for b in batches for row in b["encoder_input_tokens"]}
  assert modes & {"[NLU]", "[NLG]"} and all(m[:1] == "[" for m in modes)


def test_ul2r_preset_is_half_prefix_lm_with_its_denoisers_settings():
  ds, normalized, examples = _examples((512, 512), 4_000, ul2.UL2R_RATES, ul2.UL2R_DENOISERS)
  assert [d.kind for d in ds] == ["R", "X", "X", "S"] and normalized[-1] == 0.5
  _assert_rates_proportions(examples, normalized)
  noise, spans = _noise_and_spans(examples, ds.index(next(d for d in ds if d.mean_span == 32)))
  assert abs(noise / spans / 32 - 1) < 0.05, noise / spans
