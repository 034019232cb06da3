"""Machinery every training stage shares: device, schedule, checkpoints, metrics, progress."""
