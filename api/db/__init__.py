"""Persistence: SQLAlchemy models, the engine, and query helpers (plain functions taking a session)."""
