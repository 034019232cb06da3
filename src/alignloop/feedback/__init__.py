"""Stage 2: the feedback store (prompts, responses, items, annotators, judgments) and its formats.

Entry point: `open_store(path_or_url) -> Store`. See `store.py`.
"""

from alignloop.feedback.answers import Answer
from alignloop.feedback.store import Conflict, NotFound, Store, open_store

__all__ = ["Answer", "Conflict", "NotFound", "Store", "open_store"]
