"""Training: the run top to bottom (`loop`), its configuration (`run_config`), the step
assembled once (`step_builder`) around the pure jitted `step`, where a run starts
(`resume`), losses, optimizers, dynamic task weighting, metrics, the ahead-of-time compile
(`aot`) and the search for a setting that fits a slice (`fit/`).

May import decode/ (evaluation during training), model/, data/, parallel/,
checkpoint and config; never cli/.
"""
