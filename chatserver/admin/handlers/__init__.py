"""The management API's handlers, one module per resource.

Each module declares its routes with its own :class:`~chatserver.admin.routing.Router`;
:mod:`chatserver.admin.routes` lists every module, in this order::

    users       users, their policy, and connected sessions
    groups      groups and their members
    categories  categories, their principal lists, who they allow
    rooms       rooms, their roles, disabling, who may read them
    messages    clearing a room, finding, removing and replacing messages
    lifecycle   the edit policy of rooms and categories (users' edits and deletes)
    retention   retention policies, the purge preview and run, legal holds
    addins      add-ins
    config      run-time settings, and the compliance settings (read-only)
    pool        the pool's nodes: active list, swap, drain
    directory   the LDAP directory sync: its status, a run now
    audit       the audit log
    tokens      session tokens for administrators

``views`` reads a resource as the API shows it (shared by the modules above). Handlers call the
same domain functions the client protocol uses (:mod:`chatserver.rooms.governance`), as an
administrator, so a change made here is enforced on live connections exactly like one made by a
client — and recorded in the audit log there, one entry per governance change, as for a client:
those handlers use :meth:`~chatserver.admin.context.Ctx.govern` and their routes say
``audited_by="governance"`` (a new user is recorded by accounts). Every other change goes through
:meth:`~chatserver.admin.context.Ctx.change` (or ``create``, or ``audit``), which records the
entry. A read changes nothing.
"""
