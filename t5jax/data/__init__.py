"""SeqIO tasks and mixtures over TFDS builders, a task's example store (`task_store`),
per-example ops (span corruption) keyed by stream position, packing and host-local batches.

Part of the ground: imports no other t5jax folder but `t5jax.store` (the example store,
which knows nothing of tasks) and `t5jax.fs`.
"""
