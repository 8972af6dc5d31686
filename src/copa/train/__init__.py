"""Training: optimiser parameter groups, learning-rate schedules, the pretraining step."""
