"""Training: the config schema (config.py), the one training step (step.py), the loop (trainer.py),
checkpoints, run folders, logging, the optimizer, the device and DDP's collectives."""
