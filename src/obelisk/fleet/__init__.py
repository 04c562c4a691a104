"""The fleet: a service nodes register with and attest to (push), its database and its clients.

`db.py` the tables and the database (SQLAlchemy, schema by the alembic migrations in `alembic/`),
`service.py` the rules (registration, approval, rounds, statuses, audit) over one database,
`server.py` the HTTPS transport, `client.py` the operator's and the node's side of it.
"""
