"""How the Personalizer surface joins the service: its router, and at start-up the slot it serves
(``ServiceSettings.personalizer_slot``) created when missing."""

from __future__ import annotations

import asyncio
from typing import Any

from api.features import Feature
from api.personalizer.routes import ROUTES, ensure_slot
from api.state import app_state_of

__all__ = ["FEATURE"]


async def startup(app: Any) -> None:
    await asyncio.to_thread(ensure_slot, app_state_of(app))


FEATURE = Feature(name="personalizer", routes=ROUTES, startup=startup)
