"""The example store: a split's tokenized examples, sharded and jagged, written once by a
Beam pipeline and read at random through TensorStore, on local disk or `gs://`.

Four layers, each importing only those before it (as Levanter's `jagged_array` <
`tree_store` < `cache`): `kvstore` (bytes and JSON at a location; one-line `StoreError`s),
`layout` (the keys, the zarr3 arrays and the format), `reader` and `writer` (an
`ExampleStore`; one shard's `ShardWriter`), and `beam_build` (the pipeline that writes a whole
store, resumably). It knows nothing of tasks: what a unit of the source is and how its
examples are read come from the caller as plain JSON and a callable
(`t5jax.data.task_store` connects a SeqIO task to its store).

Part of the ground: imports no other t5jax folder and no SeqIO or TensorFlow; it may import
`t5jax.fs`. Callers outside use the names below.
"""

from t5jax.store.beam_build import Job, build, delete, verify
from t5jax.store.kvstore import StoreError, is_gcs, join, normalize
from t5jax.store.layout import FORMAT
from t5jax.store.reader import ExampleStore, exists

__all__ = ["FORMAT", "ExampleStore", "Job", "StoreError", "build", "delete", "exists", "is_gcs",
           "join", "normalize", "verify"]
