"""A SeqIO data source over a shipped TFDS dataset, prepared on first use."""

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from t5jax.data import prepare
from t5jax.data import tfds_builders

# Evaluation may read many small shards at once; a small buffer keeps their memory modest.
_READ_BUFFER_BYTES = 1 << 16
_MAX_SHUFFLE_RECORDS = 100_000


class ShippedTfdsSource(seqio.TfdsDataSource):
  """`seqio.TfdsDataSource(read_only=True)` whose dataset is prepared in `prepare.data_dir()`.

  The data dir is resolved when the data is first needed, not at task registration, so
  `$T5JAX_DATA_DIR` may be set after `t5jax.data.tasks` is imported. A shard is a contiguous
  slice of the serialized records (its index may be a tensor). With `shuffle`, the shard's
  records are shuffled anew each epoch (seeded, so deterministic). The batch pipeline reads
  each split once, in file order, into its example store (`task_store`).
  """

  def __init__(self, dataset: str, splits=None):
    """`splits`: a subset of the dataset's (default: all of them)."""
    if dataset not in tfds_builders.BUILDERS:
      raise ValueError(
          f"unknown shipped dataset {dataset!r}; expected one of {sorted(tfds_builders.BUILDERS)}")
    self._dataset = dataset
    cls = tfds_builders.BUILDERS[dataset]
    super().__init__(
        tfds_name=f"{dataset}:{cls.VERSION}", splits=tuple(splits or cls.SPLITS),
        read_only=True)

  @property
  def tfds_dataset(self) -> seqio.utils.LazyTfdsLoader:
    prepare.prepared_builder(self._dataset)
    self._tfds_dataset.override_data_dir(str(prepare.data_dir()))
    return self._tfds_dataset

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def get_dataset(
      self,
      split: Optional[str] = None,
      shuffle: bool = True,
      seed: Optional[int] = None,
      shard_info: Optional[seqio.ShardInfo] = None,
      *,
      sequence_length: Optional[Mapping[str, int]] = None,
      use_cached: bool = False,
      num_epochs: Optional[int] = 1,
  ) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # The Task handles these.
    split = split or "train"
    if split not in self.splits:
      raise ValueError(
          f"split {split!r} is not in dataset {self._dataset}; use one of {list(self.splits)}")
    builder = prepare.prepared_builder(self._dataset)
    info = builder.info.splits[split]
    ds = tf.data.TFRecordDataset([str(f) for f in info.filepaths], buffer_size=_READ_BUFFER_BYTES)
    n = info.num_examples
    size = n
    if shard_info is not None:
      # A contiguous slice of the serialized records (TFDS shuffled them when it wrote them),
      # taken before decoding, so all shards together read the file once.
      index = tf.cast(shard_info.index, tf.int64)
      start = index * n // shard_info.num_shards
      end = (index + 1) * n // shard_info.num_shards
      ds = ds.skip(start).take(end - start)
      size = -(-n // shard_info.num_shards)
    if shuffle:
      # A full shuffle of the (small) shard, different every epoch; raw records are cheap to
      # hold, unlike a large buffer of tokenized examples after preprocessing.
      ds = ds.shuffle(max(1, min(size, _MAX_SHUFFLE_RECORDS)), seed=seed,
                      reshuffle_each_iteration=True)
    return ds.map(builder.info.features.deserialize_example,
                  num_parallel_calls=tf.data.AUTOTUNE)
