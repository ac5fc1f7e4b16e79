"""The host's state: an SQLite database (versioned schema, WAL) and the queries on it."""
