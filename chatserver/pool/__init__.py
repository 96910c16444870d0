"""The pool: several nodes over the TCP 8011 peer protocol (see docs/pool-protocol.md)."""
