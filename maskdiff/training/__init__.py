"""The training runtime: configuration, presets, the trainer, checkpoints, distributed runs,
evaluation (ELBO, pass@1) and decoding."""
