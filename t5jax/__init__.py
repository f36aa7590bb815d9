"""t5jax: T5-style text-to-text multi-task learning in JAX/Flax.

The package flows in stages; each folder may import the ones below it, never above
(tests/test_layout.py holds the rule):

  cli/       the `t5jax` command: imports anything
  train/     the training loop, the jitted step, losses, optimizers, AOT compile
  decode/    greedy / sampling / beam decoding, the Predictor, evaluation
  interop/   Hugging Face checkpoints in and out
  model/ data/ parallel/   the ground: the Flax T5, SeqIO tasks and batches, the mesh
  checkpoint.py  Orbax checkpoints, used by train/, decode/ and interop/ alike
  config.py      gin files and bindings (read only by cli/ and train/)
"""
