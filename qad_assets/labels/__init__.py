"""Astronomers' labels of candidates: a fixed vocabulary and a database that keeps every label's history.

The explorer (``qad explore``) writes labels; the ``candidate_ranking`` and ``validation_report`` assets
read them. SQLite under the storage root by default, PostgreSQL in production (``QAD_LABELS_DB``), both
through SQLAlchemy. No Dagster import.
"""
