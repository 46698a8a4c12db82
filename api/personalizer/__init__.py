"""Azure Personalizer's REST API, served: Microsoft's clients switch by changing the endpoint.

A Personalizer "service" is one slot: the endpoint ``https://host`` serves the default slot
(``ServiceSettings.personalizer_slot``, env ``SLOTBANDIT_PERSONALIZER_SLOT``, default
``personalizer``), the endpoint ``https://host/services/<slot>`` any other existing slot. Requests are translated at the edge
into the same decisions, events, policies, models and evaluations as ``/v1``: one engine, two
dialects.

One role per file:

    mapping.py  request and response translation: features flattened, durations, VW argument strings
    errors.py   errors as ``{"error": {"code", "message"}}`` with Personalizer's codes
    routes.py   ``/personalizer/v1.0/...`` and ``/personalizer/...?api-version=2022-09-01-preview``
    feature.py  how the feature joins the service (:data:`FEATURE`)
"""

from __future__ import annotations

from api.personalizer.feature import FEATURE

__all__ = ["FEATURE"]
