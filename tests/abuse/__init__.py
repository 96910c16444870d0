"""The abuse suite: what a hostile client can send, tried from the outside (issue 14)."""
