"""alignloop: the whole RLHF loop in one package."""

__version__ = "0.1.0"
