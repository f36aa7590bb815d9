"""Training: the run top to bottom (`loop`), the pure jitted `step`, losses, optimizers,
dynamic task weighting, metrics and the ahead-of-time compile (`aot`).

May import decode/ (evaluation during training), model/, data/, parallel/,
checkpoint and config; never cli/.
"""
