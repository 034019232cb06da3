"""Jinja2 templates (autoescaped: model outputs always show as text) and the page helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from alignloop.feedback.models import ASPECTS

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.autoescape = True  # every template, whatever its file name
templates.env.globals["ASPECTS"] = ASPECTS


def page(request: Request, name: str, status_code: int = 200, csrf_token: Optional[str] = None,
         **context: Any) -> Response:
    """Render a page for the signed-in user (if any), with their CSRF token for its forms."""
    auth = getattr(request.state, "auth", None)
    context.setdefault("user", auth.user if auth else None)
    context["csrf_token"] = csrf_token if csrf_token is not None else (auth.csrf_token if auth else "")
    return templates.TemplateResponse(request, name, context, status_code=status_code)
