"""One router per resource: auth, queue (annotating), users, items, settings, stats, export.

Each module serves both the HTML pages and the JSON API (`/api/...`) of its
resource, calling the same store methods.
"""
