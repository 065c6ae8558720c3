"""Training: losses, mixing, optimizer groups, schedules, EMA, checkpoints and the train loop."""
