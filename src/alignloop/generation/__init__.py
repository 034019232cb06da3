"""Sampling from a causal LM with log-probs, shared by rollouts, training, evaluation and `alignloop sample`."""
