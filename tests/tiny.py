"""What many tests build the same way: a tiny training run's gin bindings and a small
model's parameters. (Packed batches of known structure: synthetic.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# The demo's model at two layers per stack (t5_1_0_tiny), 8 rows of 32 tokens: the code a
# real run runs, a fraction of the work.
RUN = ("TrainConfig.model='t5_1_0_tiny'", "TrainConfig.batch_size=8",
       "InputSpec.inputs_length=32", "InputSpec.targets_length=32")


def bindings(*extra: str) -> list[str]:
  """RUN's gin bindings ('Configurable.field=value'), then `extra` (a later one wins)."""
  return [*RUN, *extra]


def flags(*extra: str) -> list[str]:
  """The same as command-line flags: --gin.Configurable.field=value."""
  return [f"--gin.{binding}" for binding in bindings(*extra)]


def init_params(cfg, seed: int = 0, encoder_tokens=None, decoder_tokens=None, **kwargs):
  """Unboxed parameters of a Transformer with config `cfg`, initialised from key `seed` on
  the given tokens (a [1, 8] row of ones by default) and Transformer keywords."""
  from t5jax.model import t5  # pylint: disable=g-import-not-at-top
  ones = jnp.ones((1, 8), jnp.int32)
  encoder_tokens = ones if encoder_tokens is None else encoder_tokens
  decoder_tokens = ones if decoder_tokens is None else decoder_tokens
  boxed = t5.Transformer(cfg).init(jax.random.key(seed), encoder_tokens, decoder_tokens,
                                   **kwargs)
  return nn.meta.unbox(boxed["params"])
