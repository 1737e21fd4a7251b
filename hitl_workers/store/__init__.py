"""Persistence: tables, engine, migrations and the repository of guarded transitions."""
