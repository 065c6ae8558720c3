"""Training: losses, mixing, optimizer groups, schedules, EMA, checkpoints, the train loop, token labels, the SuperViT step."""
