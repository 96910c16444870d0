"""Export and import of a deployment (docs/export-format.md).

- :mod:`.format` — the versioned file format: typed records, one JSON line each, gzip-compressed.
- :mod:`.exporter` — the store to a file, streamed in keyset pages (bounded memory).
- :mod:`.importer` — a file into a store: ids mapped, seq and client ids kept, idempotent, with
  a choice for names that are taken (skip, rename, fail).
- :mod:`.cli` — ``chatserver export`` and ``chatserver import``.
"""
