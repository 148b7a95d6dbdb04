"""Training attnkit models on real text: :mod:`.lm` (trainer, checkpoints) and :mod:`.metrics`."""
