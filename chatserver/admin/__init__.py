"""The management port: REST API, Prometheus metrics, health (see docs/administration.md).

::

    server.py    the aiohttp application: authentication, validation, errors, /metrics, health
    node.py      NodeControl: what the API needs of the node (the admin never imports it)
    routes.py    the route table (every handler module's routes) and the OpenAPI document
    routing.py   Route, and the Router each handler module declares its routes with
    context.py   Ctx: a request's node, actor, parameters; change()/create() audit each change
    types.py     shared field types; In, the base of request models (the one text check)
    models.py    request and response models
    handlers/    one module per resource: users, groups, categories, rooms, messages, addins,
                 config, pool, audit, tokens; views.py reads a resource as the API shows it
    cli.py       ``chatserver admin …`` and ``chatserver selftest``: the parser and the runner
    command.py   how a command is declared (the route it calls) and its argument helpers
    commands.py  every ``chatserver admin`` command
    client.py    the command line's HTTP client and output
    selftest.py  ``chatserver selftest``

A request: ``server`` authenticates it, validates it against its ``Route``, builds a ``Ctx``
and calls the handler. A route's ``operationId`` in ``/openapi.json`` is its handler's name
(``GET /api/v1/sessions`` is ``handlers.users.list_sessions``; tokens are in ``tokens``).
"""
