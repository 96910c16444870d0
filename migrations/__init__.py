"""Alembic migrations for both dialects (SQLite and PostgreSQL); run with ``chatserver migrate``."""
