"""Decoding: greedy, sampling and beam search over a KV cache, the `Predictor` that
serves a checkpoint, and evaluation with real metrics.

Stands on model/, data/, parallel/ and checkpoint; never imports train/ or cli/.
"""
