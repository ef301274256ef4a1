"""The schema steps shipped before the schema files: databases of every earlier version."""
