"""make_batches: the batch contract with the trainer."""

import dataclasses
import itertools

import numpy as np
import pytest
import seqio

from t5jax.data import pipeline
from t5jax.data import vocab
from t5jax.data.pipeline import InputSpec

FEATURES = {
    "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
    "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
    "decoder_segment_ids", "decoder_positions", "decoder_task_ids", "encoder_task_ids",
}


def _take(spec, n, batch=8, **kwargs):
  return list(itertools.islice(pipeline.make_batches(spec, batch, **kwargs), n))


def _assert_equal_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def mix_batches(t5jax_data_dir):
  del t5jax_data_dir
  spec = InputSpec("multi30k_mix", inputs_length=64, targets_length=64, seed=5, num_workers=0)
  return spec, _take(spec, 6)


def test_task_names():
  assert pipeline.task_names("multi30k_mix") == ["multi30k_en_de", "multi30k_en_fr"]
  assert pipeline.task_names("glue_rte") == ["glue_rte"]


def test_shapes_and_dtypes(mix_batches):
  _, batches = mix_batches
  for b in batches:
    assert set(b) == FEATURES
    for k, v in b.items():
      assert v.shape == (8, 64) and v.dtype == np.int32, k


def test_packed_rows_are_consistent(mix_batches):
  _, batches = mix_batches
  v = vocab.get_vocabulary()
  prefixes = ["translate English to German: ", "translate English to French: "]
  segments = 0
  for b in batches:
    targets = b["decoder_target_tokens"]
    np.testing.assert_array_equal(b["decoder_loss_weights"], targets != 0)
    np.testing.assert_array_equal(b["decoder_task_ids"][targets == 0], 0)
    np.testing.assert_array_equal(b["encoder_task_ids"][b["encoder_input_tokens"] == 0], 0)
    for row in range(8):
      seg_in, seg_out = b["encoder_segment_ids"][row], b["decoder_segment_ids"][row]
      assert set(seg_in[seg_in > 0]) == set(seg_out[seg_out > 0])
      for s in set(seg_out[seg_out > 0]):
        segments += 1
        out = seg_out == s
        task_ids = set(b["decoder_task_ids"][row][out])
        assert len(task_ids) == 1  # One task per packed example.
        # Its encoder segment carries the same task id (per-task parameters read it).
        assert set(b["encoder_task_ids"][row][seg_in == s]) == task_ids
        np.testing.assert_array_equal(b["decoder_positions"][row][out], np.arange(out.sum()))
        inputs = b["encoder_input_tokens"][row][seg_in == s]
        text = v.decode(inputs.tolist())
        assert text.startswith(prefixes[task_ids.pop()]), text
        # Teacher forcing: decoder inputs are the targets shifted right, starting at 0.
        dec_in = b["decoder_input_tokens"][row][out]
        assert dec_in[0] == 0
        np.testing.assert_array_equal(dec_in[1:], targets[row][out][:-1])
  assert segments > 8 * 6  # Packing put more than one example in rows.


def test_same_seed_same_stream_other_seed_other_stream(mix_batches):
  spec, batches = mix_batches
  _assert_equal_batches(_take(spec, 2), batches[:2])
  other = _take(InputSpec("multi30k_mix", inputs_length=64, targets_length=64, seed=6), 1)
  assert not np.array_equal(other[0]["encoder_input_tokens"], batches[0]["encoder_input_tokens"])


def test_saved_position_resumes_exactly(mix_batches):
  spec, batches = mix_batches
  first = pipeline.make_batches(spec, 8)
  for _ in range(4):
    next(first)
  position = first.state()
  assert position.shape == (8, 3)  # Per row: mixture draws, then examples taken per task.
  np.testing.assert_array_equal(position[:, 0], position[:, 1:].sum(1))
  resumed = pipeline.make_batches(spec, 8, state=position)
  _assert_equal_batches([next(resumed) for _ in range(2)], batches[4:6])


def test_worker_processes_make_the_same_batches(mix_batches):
  spec, batches = mix_batches
  _assert_equal_batches(_take(dataclasses.replace(spec, num_workers=3), 6), batches)


@pytest.fixture
def small_mix():
  # Two tasks keep the seven pipelines below quick while covering mixing, span corruption
  # and packing (multitask_mix builds ten task streams per pipeline).
  name = "test_rte_span_corruption_mix"
  seqio.MixtureRegistry.add(name, [("glue_rte", 1.0), ("text_span_corruption", 1.0)])
  yield name
  seqio.MixtureRegistry.remove(name)


def test_global_batch_does_not_depend_on_process_count(t5jax_data_dir, small_mix):
  del t5jax_data_dir
  spec = InputSpec(small_mix, inputs_length=32, targets_length=32, seed=3)
  reference = _take(spec, 2, batch=4)
  for count in (2, 4):
    parts = [_take(spec, 2, batch=4, process_index=i, process_count=count) for i in range(count)]
    for part in parts:
      assert part[0]["encoder_input_tokens"].shape == (4 // count, 32)
    merged = [{k: np.concatenate([p[step][k] for p in parts]) for k in reference[step]}
              for step in range(2)]
    _assert_equal_batches(merged, reference)


def test_unpacked_rows_have_segment_ids_and_positions(t5jax_data_dir):
  del t5jax_data_dir
  b = _take(InputSpec("glue_cola", inputs_length=32, targets_length=8, pack=False), 1)[0]
  for prefix, tokens in (("encoder", b["encoder_input_tokens"]),
                         ("decoder", b["decoder_target_tokens"])):
    mask = (tokens != 0).astype(np.int32)
    np.testing.assert_array_equal(b[f"{prefix}_segment_ids"], mask)
    np.testing.assert_array_equal(b[f"{prefix}_positions"], np.arange(tokens.shape[1]) * mask)
  assert set(np.unique(b["decoder_task_ids"])) == {0}
  assert (b["decoder_target_tokens"][:, 0] != 0).all()  # One example per row, no empty rows.


def test_single_pass_covers_the_split_once(t5jax_data_dir):
  del t5jax_data_dir
  spec = InputSpec("glue_rte", split="validation", inputs_length=16, targets_length=8,
                   pack=False, shuffle=False)
  batches = list(pipeline.make_batches(spec, 8, repeat=False))
  assert len(batches) == 35  # ceil(277 / 8): the rows' shards are 34 or 35 examples.
  targets = np.concatenate([b["decoder_target_tokens"] for b in batches])
  real = targets[targets[:, 0] != 0]
  v = vocab.get_vocabulary()
  labels = [v.decode(t.tolist()) for t in real]
  assert (len(labels), labels.count("entailment"), labels.count("not_entailment")) == (277, 146, 131)
  assert len(targets) - len(real) == 3  # All-zero padding rows fill the last batch.


def test_bad_arguments_are_one_line_errors(t5jax_data_dir):
  del t5jax_data_dir
  with pytest.raises(ValueError, match=r"^global_batch_size=10 is not divisible by process_count=4"):
    pipeline.make_batches(InputSpec("glue_rte"), 10, process_count=4)
  with pytest.raises(ValueError, match=r"^unknown task or mixture 'multi30k_en_frr'; did you mean "
                                       r"multi30k_en_fr"):
    pipeline.make_batches(InputSpec("multi30k_en_frr"), 8)
  with pytest.raises(ValueError, match=r"^task 'glue_rte' has no split 'test'; use one of"):
    pipeline.make_batches(InputSpec("glue_rte", split="test"), 8)
  with pytest.raises(ValueError, match=r"^InputSpec.inputs_length=0 must be a positive length"):
    InputSpec("glue_rte", inputs_length=0)
  for message in ("unknown task or mixture 'glue_mixx'",):
    with pytest.raises(ValueError) as e:
      pipeline.task_names("glue_mixx")
    assert str(e.value).startswith(message) and "glue_mix" in str(e.value)
    assert "\n" not in str(e.value)
