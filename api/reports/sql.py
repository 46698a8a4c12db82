"""The SQL text of the report's scan, per dialect, and the layout of the packed integer it encodes.

``_sql_parts`` holds what differs between SQLite and PostgreSQL (placeholders, string aggregation,
epoch arithmetic, join order hints); the query builders assemble the same queries from those parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bandits.context import DAYPARTS, DEVICE_TYPES

__all__: list[str] = []  # shared with the package's modules only


# Column transfer. Fetching 1,000,000 rows through the DB-API costs about a second per few
# columns on this machine (a Python object per value), and so does every string aggregate or
# string function per row in SQLite. So the report's scan returns one row: each column of the
# experiment's decisions, in log order, joined into one string (SQLite ``group_concat``,
# PostgreSQL ``string_agg``), and numpy splits and encodes it with no Python loop per row.
# Arm, device type and day part come from closed vocabularies (the experiment's arms,
# ``bandits.context.DEVICE_TYPES`` and ``DAYPARTS``), so SQL encodes them, with the flags, into
# one small integer per decision; a value outside them (legacy rows) sends that dimension to a
# second scan of its strings.
_SEP = 0x1F  # ASCII unit separator between values
_REPORT_INDEX = "ix_decisions_experiment_report"  # migration 0005: covers every column the scan reads


_PACKED_BITS = 14
_OTHER = 7  # vocabulary code of a device type or day part outside the vocabulary
_NO_ARM = 15
_NULL_UNIT = "#" * 32  # stands for a missing unit key (then the event is the unit), keeps unit keys fixed-width
_DEVICES = (*DEVICE_TYPES, *(() if "unknown" in DEVICE_TYPES else ("unknown",)))
_DAYPARTS = (*DAYPARTS, "unknown")
_HOUR_WIDTH = 13  # "YYYY-MM-DD HH": the hour bucket; its first 10 characters are the day bucket
if max(len(_DEVICES), len(_DAYPARTS)) >= _OTHER:  # three bits per vocabulary, 7 for any other value
    raise ImportError("the device type or day part vocabulary outgrew the report's packed codes")
# bit layout of the packed integer: 0 fallback, 1 deferred, 2 activated, 3 no unit key,
# 4-7 arm position (15: not an arm of the experiment), 8-10 device type, 11-13 day part, 14- seq
_FLAG_BITS = 0xFF  # bits 0-7 of the packed integer are kept per decision as its flags
_DIMENSIONS = ("device_type", "country", "day_part", "hour")


def _sql_parts(dialect: str) -> dict[str, str]:
    if dialect == "sqlite":
        return {
            "ph": "?",
            "agg": "group_concat({value}, {sep})",
            "sep": "char(31)",
            "int": "{value}",
            "bool": "({value})",
            "epoch_d": "(julianday(d.created_at) - 2440587.5) * 86400.0",
            "epoch_r": "(julianday(rw.created_at) - 2440587.5) * 86400.0",
            "hour": "d.created_at",  # the stored ISO text; numpy keeps its first _HOUR_WIDTH bytes
            "hour_width": str(_HOUR_WIDTH),
            "scan": f"decisions d INDEXED BY {_REPORT_INDEX}",
            "rewards_first": "rewards rw CROSS JOIN decisions d",  # SQLite: CROSS JOIN fixes the loop order
            "decisions_first": "decisions d CROSS JOIN rewards rw",
            "activations_first": "activations a CROSS JOIN decisions d",
            "activation_key": "a.rowid",
        }
    return {
        "ph": "%s",
        "agg": "string_agg({value}, {sep} ORDER BY d.seq)",
        "sep": "chr(31)",
        "int": "({value})::text",
        "bool": "({value})::int",
        "epoch_d": "extract(epoch from d.created_at)",
        "epoch_r": "extract(epoch from rw.created_at)",
        "hour": "to_char(d.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')",
        "hour_width": "0",
        "scan": "decisions d",
        "rewards_first": "rewards rw JOIN decisions d",  # PostgreSQL's planner picks the join order
        "decisions_first": "decisions d JOIN rewards rw",
        "activations_first": "activations a JOIN decisions d",
        "activation_key": "a.created_at",
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _vocabulary_case(column: str, labels: Sequence[str], other: int) -> str:
    whens = " ".join(f"WHEN {_quote(label)} THEN {i}" for i, label in enumerate(labels))
    missing = labels.index("unknown")
    return f"CASE {column} {whens} ELSE (CASE WHEN {column} IS NULL THEN {missing} ELSE {other} END) END"


def _range(parts: Mapping[str, str]) -> str:
    """The decisions a scan reads. Placeholders: experiment id, seq after which to start, largest seq."""
    ph = parts["ph"]
    return f"d.experiment_id = {ph} AND d.seq > {ph} AND d.seq <= {ph}"


def _main_query(parts: Mapping[str, str], arms: Sequence[str], probe_activations: bool) -> str:
    """One row: count, then the decisions of :func:`_range` column by column in log order (seq).

    ``probe_activations``: look each decision up in ``activations`` (else :func:`_activation_query`
    brings the activated decisions).
    """
    agg, sep, flag = parts["agg"], parts["sep"], parts["bool"]
    arm_case = " ".join(f"WHEN {_quote(a)} THEN {i}" for i, a in enumerate(arms))
    activated = (f"4 * {flag.format(value='EXISTS (SELECT 1 FROM activations a WHERE a.event_id = d.event_id)')} + "
                 if probe_activations else "")
    packed = (f"{flag.format(value='d.fallback')} + 2 * {flag.format(value='d.deferred')} + {activated}"
              f"8 * {flag.format(value='d.unit_key IS NULL')} + "
              f"16 * (CASE d.arm {arm_case} ELSE {_NO_ARM} END) + "
              f"256 * ({_vocabulary_case('d.device_type', _DEVICES, _OTHER)}) + "
              f"2048 * ({_vocabulary_case('d.daypart', _DAYPARTS, _OTHER)})")
    columns = [
        agg.format(value=parts["int"].format(value=f"d.seq * {1 << _PACKED_BITS} + {packed}"), sep="','"),
        agg.format(value="COALESCE(d.country, 'unknown')", sep=sep),
        agg.format(value=parts["hour"], sep=sep),
    ]
    return f"SELECT count(*), {', '.join(columns)} FROM {parts['scan']} WHERE {_range(parts)}"


def _unit_query(parts: Mapping[str, str]) -> str:
    """The unit keys in log order (a second scan of the same rows, on another connection). Placeholders as
    :func:`_range`."""
    value = f"COALESCE(d.unit_key, {_quote(_NULL_UNIT)})"
    return (f"SELECT count(*), {parts['agg'].format(value=value, sep=parts['sep'])} FROM {parts['scan']} "
            f"WHERE {_range(parts)}")


def _activation_query(parts: Mapping[str, str]) -> str:
    """The seq of every decision in a seq range (SQLite: of any experiment; numpy keeps the experiment's)
    with an activation whose key (SQLite rowid, PostgreSQL created_at) is above a cursor. SQLite walks
    ``activations`` from the cursor and probes the unique event-id index of decisions, which holds the
    seq: no table read. Placeholders: activation cursor, lowest seq, largest seq (and the experiment id on
    PostgreSQL, whose planner needs it to start from the experiment's decisions)."""
    ph = parts["ph"]
    experiment = f" AND d.experiment_id = {ph}" if ph == "%s" else ""
    return (f"SELECT {parts['agg'].format(value=parts['int'].format(value='d.seq'), sep=repr(','))} "
            f"FROM {parts['activations_first']} ON d.event_id = a.event_id "
            f"WHERE {parts['activation_key']} > {ph} AND d.seq BETWEEN {ph} AND {ph}{experiment}")


def _string_query(parts: Mapping[str, str], column: str) -> str:
    """One dimension's strings (missing -> 'unknown') in log order: the path for values outside a vocabulary."""
    value = f"COALESCE(d.{column}, 'unknown')" if column != "hour" else parts["hour"]
    return (f"SELECT count(*), {parts['agg'].format(value=value, sep=parts['sep'])} FROM {parts['scan']} "
            f"WHERE {_range(parts)}")


def _reward_query(parts: Mapping[str, str], rewards_first: bool, tail: bool) -> str:
    """Windowed rewards of the experiment's decisions as (seq, reward id, value) rows (rows, not joined
    text: SQLite prints at most 16 significant digits, and a reward must read back exactly).

    ``tail`` False: every reward with an id above a cursor, of any decision up to the largest seq;
    placeholders: experiment id, largest seq, reward cursor, window in seconds. ``tail`` True: the
    rewards with an id up to the cursor of the decisions of :func:`_range`; placeholders: those of
    :func:`_range`, reward cursor, window. Together they are every reward not yet in the report copy.
    """
    source = parts["rewards_first"] if rewards_first else parts["decisions_first"]
    ph = parts["ph"]
    where = (f"{_range(parts)} AND rw.id <= {ph}" if tail
             else f"d.experiment_id = {ph} AND d.seq <= {ph} AND rw.id > {ph}")
    return (f"SELECT d.seq, rw.id, rw.value FROM {source} ON d.event_id = rw.event_id "
            f"WHERE {where} AND {parts['epoch_r']} <= {parts['epoch_d']} + {ph}")
