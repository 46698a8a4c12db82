"""A decision's candidates, rebuilt from the log: the one query and the one rule.

A logged decision names its candidates by id (``candidate_ids``, in the order they were offered)
and says where their features were: its slot's catalog version (``catalog_version``, immutable) or
the inline candidates of the request (``inline_candidates``). Everything that reads decisions
back — the learner, the offline log (and so the DSJSON export and the offline evaluation), the
report's offline section, an event's answer, the registry and the experiments (a slot's current
catalog) — rebuilds them here:

* :func:`catalog_blocks` — the one query: the blocks of one catalog version;
* :func:`candidates_of` — blocks (``{"id", "features"}`` dicts) as ``Candidate`` objects;
* :class:`CatalogCache` — catalog versions loaded once each (they never change) and
  :meth:`CatalogCache.candidates`, the rule: a decision's candidates with the features they had,
  in the logged order, or None when they cannot be rebuilt exactly;
* :func:`decision_candidates` — the same for one decision, on a connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection, select

from api.db.models import CatalogVersion
from bandits.policies import Candidate

__all__ = ["CatalogCache", "Logged", "LoggedCandidates", "candidates_of", "catalog_blocks", "decision_candidates"]


class LoggedCandidates(Protocol):
    """What a logged decision says about its candidates (a row of ``decisions``, or any record
    with these attributes)."""

    @property
    def slot_id(self) -> int: ...

    @property
    def catalog_version(self) -> int | None: ...

    @property
    def inline_candidates(self) -> Sequence[Mapping[str, Any]] | None: ...

    @property
    def candidate_ids(self) -> Sequence[str]: ...


class Logged(NamedTuple):
    """The candidate columns of one logged decision, decoded (a :class:`LoggedCandidates`)."""

    slot_id: int
    catalog_version: int | None
    inline_candidates: Sequence[Mapping[str, Any]] | None
    candidate_ids: Sequence[str]

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Logged:
        """From a decision as a mapping (``api.db.queries.find_decision``, the log writer's rows)."""
        return cls(row["slot_id"], row["catalog_version"], row.get("inline_candidates"), row["candidate_ids"])


def catalog_blocks(connection: Connection, slot_id: int, version: int | None) -> list[dict[str, Any]] | None:
    """The blocks (``{"id", "features"}``) of catalog ``version`` of the slot; None when it has none."""
    if not version:
        return None
    blocks = connection.execute(
        select(CatalogVersion.blocks).where(CatalogVersion.slot_id == slot_id, CatalogVersion.version == version)
    ).scalar_one_or_none()
    return None if blocks is None else list(blocks)


def candidates_of(blocks: Iterable[Mapping[str, Any]] | None) -> tuple[Candidate, ...]:
    """Blocks or inline candidates (``{"id", "features"}``) as candidates, in their order."""
    return tuple(Candidate(b["id"], b.get("features") or {}) for b in blocks or ())


class CatalogCache:
    """Candidates of catalog versions (immutable, so cached for good)."""

    def __init__(self) -> None:
        self._versions: dict[tuple[int, int], tuple[Candidate, ...]] = {}

    def load(self, connection: Connection, keys: Iterable[tuple[int, int]]) -> None:
        """Read the (slot id, version) catalogs not loaded yet, one query each."""
        for slot_id, version in [key for key in keys if key not in self._versions]:
            blocks = catalog_blocks(connection, slot_id, version)
            if blocks is not None:
                self._versions[(slot_id, version)] = candidates_of(blocks)

    def version(self, slot_id: int, version: int) -> tuple[Candidate, ...] | None:
        """The candidates of a loaded catalog version, in catalog order."""
        return self._versions.get((slot_id, version))

    def candidates(self, row: LoggedCandidates) -> tuple[Candidate, ...] | None:
        """The decision's candidates, with the features they had, in the logged order; None when its
        catalog version is not loaded (or gone) or names a block it does not hold."""
        if row.inline_candidates:
            pool = {c.id: c for c in candidates_of(row.inline_candidates)}
        elif row.catalog_version is not None:
            version = self._versions.get((row.slot_id, row.catalog_version))
            if version is None:
                return None
            if [c.id for c in version] == list(row.candidate_ids):
                return version
            pool = {c.id: c for c in version}
        else:
            return None
        try:
            return tuple(pool[block_id] for block_id in row.candidate_ids)
        except KeyError:
            return None


def decision_candidates(connection: Connection, row: LoggedCandidates,
                        cache: CatalogCache | None = None) -> tuple[Candidate, ...] | None:
    """:meth:`CatalogCache.candidates` of one decision, loading its catalog version if needed."""
    cache = cache if cache is not None else CatalogCache()
    if not row.inline_candidates and row.catalog_version:
        cache.load(connection, [(row.slot_id, row.catalog_version)])
    return cache.candidates(row)
