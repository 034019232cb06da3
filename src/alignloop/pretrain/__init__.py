"""Stage 1: pretraining a causal LM on a text corpus."""
