"""`t5jax compile --topology TYPE --fit`: the fastest setting of remat, scanned layers,
query blocks, microbatches and mesh split that fits a TPU slice, by job: the analytic
`cost` model, the on-disk cache of libtpu's compile `reports`, the `search`, the `pricing`
of a microbatched step over all its microbatches, and the `writers` of its table, recipe
and summary."""
