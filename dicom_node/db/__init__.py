"""The database, the single source of truth between the stages.

- ``schema``: the tables;
- ``sessions``: connecting (SQLite or PostgreSQL) and bringing an older database up
  to this schema;
- ``leases``, ``ownership``: the two work queues' claim, lease and backoff rules, and
  whether the owner of running work still lives;
- ``timestamps``: aware UTC from SQL aggregates.

May import the top-level errors only; never another stage, the service or the CLI.
"""
