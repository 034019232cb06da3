"""Model construction (presets, any local HF causal LM) and loading."""
