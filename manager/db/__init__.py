"""Database models and sessions. Postgres is the only state."""
