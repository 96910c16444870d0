"""The chat domain: the service (rules), the hub (live delivery) and the writer (group commit)."""
