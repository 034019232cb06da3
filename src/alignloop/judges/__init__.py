"""Judges of the built-in story task: text features, the gold judge and simulated annotators."""
