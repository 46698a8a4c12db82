"""Appending rows to a SQLite table without SQLAlchemy's per-execution machinery.

``connection.execute(insert(table), rows)`` spends most of a small group commit
on building an execution context, not on SQLite: 0.2-0.3 ms for a one-row
batch of a decision inside the server. :class:`SqliteAppender` compiles one
``INSERT`` per (table, keys) and hands ``executemany`` on the DBAPI cursor the
values converted by each column type's own SQLAlchemy bind processor (JSON
through the engine's serializer, datetimes to SQLAlchemy's SQLite text form,
booleans to integers), so the stored bytes are the ones ``insert(table)``
stores; tests compare them column by column. A key set that leaves out a
column with a Python-side default (which SQLAlchemy would fill) falls back to
``insert(table)``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Table, insert
from sqlalchemy.exc import DBAPIError

__all__ = ["SqliteAppender", "append_rows"]

_Plan = tuple[str, tuple[tuple[str, Callable[[Any], Any] | None], ...]]


class SqliteAppender:
    def __init__(self, dialect: Dialect) -> None:
        if dialect.name != "sqlite":
            raise ValueError("SqliteAppender is for SQLite only")
        self._dialect = dialect
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan | None] = {}

    def append(self, connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ``rows`` (dicts of column values) in the connection's current transaction."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        for keys, group in groups.items():
            plan = self._plan(table, keys)
            if plan is None:
                connection.execute(insert(table), group)
                continue
            sql, converters = plan
            values = [tuple(convert(row[key]) if convert else row[key] for key, convert in converters) for row in group]
            cursor = connection.connection.cursor()
            try:
                cursor.executemany(sql, values)
            except self._dbapi_error as error:
                # the SQLAlchemy exception classes callers expect (IntegrityError for a duplicate key)
                raise DBAPIError.instance(sql, None, error, self._dbapi_error) from error
            finally:
                cursor.close()

    def _plan(self, table: Table, keys: tuple[str, ...]) -> _Plan | None:
        cache_key = (table.name, keys)
        if cache_key in self._plans:
            return self._plans[cache_key]
        plan: _Plan | None = None
        columns = table.columns
        defaults_left_out = any(c.default is not None and c.name not in keys for c in columns)
        if not defaults_left_out and all(key in columns for key in keys):
            quote = self._dialect.identifier_preparer.quote
            sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(k) for k in keys)}) "
                   f"VALUES ({', '.join('?' for _ in keys)})")
            dialect = self._dialect
            plan = (sql, tuple((key, columns[key].type.dialect_impl(dialect).bind_processor(dialect)) for key in keys))
        self._plans[cache_key] = plan
        return plan


# one appender (its compiled plans) per engine's dialect, gone with the engine
_appenders: weakref.WeakKeyDictionary[Dialect, SqliteAppender] = weakref.WeakKeyDictionary()


def append_rows(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` in the current transaction: :class:`SqliteAppender` on SQLite, else ``insert(table)``."""
    if not rows:
        return
    dialect = connection.dialect
    if dialect.name != "sqlite":
        connection.execute(insert(table), list(rows))
        return
    appender = _appenders.get(dialect)
    if appender is None:
        appender = _appenders[dialect] = SqliteAppender(dialect)
    appender.append(connection, table, rows)
