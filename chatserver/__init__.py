"""A persistent chat server: rooms, lasting history, governance and compliance."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
