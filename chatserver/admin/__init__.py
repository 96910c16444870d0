"""The management port: REST API, Prometheus metrics, health (see docs/administration.md)."""
