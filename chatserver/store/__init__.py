"""The content store: SQLAlchemy Core tables (``schema``), one module per domain, both dialects."""
