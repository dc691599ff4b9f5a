"""Stores behind small interfaces: offline (SQLite, PostgreSQL) and online (SQLite, Redis)."""
