"""SeqIO tasks and mixtures over TFDS builders, the example store, per-example ops
(span corruption) keyed by stream position, packing and host-local batches.

Part of the ground: imports no other t5jax folder.
"""
