"""Users and groups from an LDAP directory (Active Directory, OpenLDAP).

- :mod:`.ldap` — the directory as this server asks it (blocking ``ldap3`` calls, which the node
  runs in a worker thread): a sign-in by bind, and a whole snapshot of users and groups with
  nested groups resolved.
- :mod:`.sync` — the periodic sync: a snapshot written into the store's users and groups (marked
  ``directory``), guarded against mass removals, one node of a pool at a time (a store lease),
  and made true on live sessions like a local change.
"""
