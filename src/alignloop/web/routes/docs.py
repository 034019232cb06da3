"""The JSON API's OpenAPI schema (admins only): `GET /api/docs`.

Served as the schema itself, not FastAPI's interactive pages: those load their
scripts from a CDN, which the app's content security policy (and the rule that
nothing reaches the network) forbids. docs/api.md has a table of the endpoints
with example bodies.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from alignloop.web.deps import require_admin

router = APIRouter(dependencies=[Depends(require_admin)])


@router.get("/api/docs", include_in_schema=False)
def api_schema(request: Request) -> dict[str, Any]:
    """The OpenAPI 3 schema of every `/api` route (the HTML pages left out)."""
    app = request.app
    if getattr(app.state, "api_schema", None) is None:
        schema = dict(app.openapi())
        schema["paths"] = {path: ops for path, ops in schema.get("paths", {}).items() if path.startswith("/api/")}
        app.state.api_schema = schema
    return app.state.api_schema
