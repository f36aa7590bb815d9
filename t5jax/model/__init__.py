"""The Flax T5 encoder-decoder (every weight and key activation named with logical
axes), its configs, task routing and the parameter tree's abstract shapes.

Part of the ground: imports no other t5jax folder.
"""
