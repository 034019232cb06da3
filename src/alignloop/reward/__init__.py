"""Stage 3: the reward model (backbone + scalar head), its data, losses, training and evaluation."""
