"""The Jinja environment of the HTML pages (``api/templates``) with its number filters, shared by the
dashboard (``api.dashboard``) and the report page (``api.reports.html``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["STATIC", "TEMPLATES", "environment", "format_interval", "format_number", "format_percent"]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def format_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.2e}"
    return str(value)


def format_percent(value: Any) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def format_interval(ci: Sequence[float] | None, digits: int = 3) -> str:
    return f"[{format_number(ci[0], digits)}, {format_number(ci[1], digits)}]" if ci else "—"


environment.filters.update(num=format_number, pct=format_percent, ci=format_interval)
