"""The abuse suite: what a hostile client tries, from the outside (issue 14)."""
