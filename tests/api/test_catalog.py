"""``api.db.catalog``: a logged decision's candidates rebuilt with the features they had, the one way
every reader of the log uses (learner, offline log and DSJSON export, report, event answers)."""

from __future__ import annotations

from sqlalchemy import select

from api.db.catalog import CatalogCache, Logged, candidates_of, catalog_blocks, decision_candidates
from api.db.engine import make_engine, migrate
from api.db.models import Slot
from api.db.queries import upsert_block, upsert_slot
from bandits.policies import Candidate


def test_candidates_are_rebuilt_from_their_catalog_version(database_url: str) -> None:
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as c:
            upsert_slot(c, "home.hero", {"default_block": "a"})
            slot_id = c.execute(select(Slot.id).where(Slot.name == "home.hero")).scalar_one()
            upsert_block(c, slot_id, "a", {"category": "news"})
            _, v2 = upsert_block(c, slot_id, "b", {"category": "sports"})
            _, v3 = upsert_block(c, slot_id, "a", {"category": "weather"})  # a new version; v2 stays as it was
        with engine.connect() as c:
            assert catalog_blocks(c, slot_id, None) is None and catalog_blocks(c, slot_id, 99) is None
            assert [b["id"] for b in catalog_blocks(c, slot_id, v2) or []] == ["a", "b"]
            cache = CatalogCache()
            exact = decision_candidates(c, Logged(slot_id, v2, None, ["a", "b"]), cache)
            assert exact == (Candidate("a", {"category": "news"}), Candidate("b", {"category": "sports"}))
            assert exact is cache.version(slot_id, v2)  # catalog order: the cached tuple itself
            assert decision_candidates(c, Logged(slot_id, v3, None, ["b", "a"]), cache) == (
                Candidate("b", {"category": "sports"}), Candidate("a", {"category": "weather"}))
            assert decision_candidates(c, Logged(slot_id, v2, None, ["a", "zz"])) is None  # not in its catalog
            assert decision_candidates(c, Logged(slot_id, 99, None, ["a"])) is None  # no such version
            inline = [{"id": "x", "features": {"k": 1}}, {"id": "y"}]
            assert decision_candidates(c, Logged(slot_id, v2, inline, ["y", "x"])) == (
                Candidate("y", {}), Candidate("x", {"k": 1}))
            assert decision_candidates(c, Logged(slot_id, None, None, ["a"])) is None
            row = {"slot_id": slot_id, "catalog_version": v2, "candidate_ids": ["b"]}
            assert decision_candidates(c, Logged.of(row)) == (Candidate("b", {"category": "sports"}),)
        assert candidates_of(None) == () and candidates_of([{"id": "q", "features": None}]) == (Candidate("q", {}),)
    finally:
        engine.dispose()
