"""SeqIO's encoder-decoder feature converter plus per-token task ids, and segment ids /
positions also without packing, so the model has one code path for packed and padded rows."""

from typing import Mapping

import seqio
import tensorflow as tf

TASK_IDS = "decoder_task_ids"
ENCODER_TASK_IDS = "encoder_task_ids"
_Spec = seqio.FeatureConverter.FeatureSpec


class TaskIdEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` that carries per-token task ids through trimming and packing.

  Input examples need `decoder_task_ids` shaped like `targets` and `encoder_task_ids` shaped
  like `inputs` (the task id repeated); SeqIO packs them alongside, so each token keeps its
  task id (the loss reads the decoder's, per-task parameters read both), and padding gets
  0. Without packing, segment ids are 1 on tokens and positions count from 0 (both 0 on
  padding): the same as a packed row that holds one example.
  """

  TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES, TASK_IDS: _Spec(tf.int32),
                   ENCODER_TASK_IDS: _Spec(tf.int32)}
  MODEL_FEATURES = {
      **seqio.EncDecFeatureConverter.MODEL_FEATURES,
      **{k: _Spec(v) for k, v in seqio.EncDecFeatureConverter.PACKING_FEATURE_DTYPES.items()},
      TASK_IDS: _Spec(tf.int32),
      ENCODER_TASK_IDS: _Spec(tf.int32),
  }

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    d[TASK_IDS] = features[TASK_IDS]
    d[ENCODER_TASK_IDS] = features[ENCODER_TASK_IDS]
    if not self.pack:
      for prefix, tokens in (("encoder", d["encoder_input_tokens"]),
                             ("decoder", d["decoder_target_tokens"])):
        mask = tf.cast(tokens != 0, tf.int32)
        d[f"{prefix}_segment_ids"] = mask
        d[f"{prefix}_positions"] = tf.range(tf.size(tokens), dtype=tf.int32) * mask
    return d

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    for prefix, key in (("encoder", "inputs"), ("decoder", "targets")):
      lengths[f"{prefix}_segment_ids"] = task_feature_lengths[key]
      lengths[f"{prefix}_positions"] = task_feature_lengths[key]
    lengths[TASK_IDS] = task_feature_lengths["targets"]
    lengths[ENCODER_TASK_IDS] = task_feature_lengths["inputs"]
    return lengths
