"""The catalogue port family: records, caption claims and API keys on SQLite and PostgreSQL."""
