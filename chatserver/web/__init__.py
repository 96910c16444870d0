"""The browser side of a node, served by its client HTTP listener (``listen.http``).

- :mod:`.client` serves the chat client: ``/`` (the page), ``/static/…`` (its modules and style
  sheet, shipped as package data in ``static/``) and ``/client.json`` (where the page's
  WebSocket connects). Every page goes out with a strict Content-Security-Policy.

The page speaks the documented WebSocket protocol (JSON, subprotocol ``chatserver.json``) and the
HTTP file endpoints; there is no second API.
"""
