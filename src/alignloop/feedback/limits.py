"""Bounds on what an item may ask of annotators, shared by the store, the configs and the web app.

Kept apart from the store so that configs can name them without importing SQLAlchemy.
"""

# The most annotators one item can ask for, on every path that sets an overlap (settings, upload, import,
# API, CLI, configs). Agreement statistics gain nothing past a few dozen, and a bound keeps a claim's slot
# search small.
MAX_OVERLAP = 50
