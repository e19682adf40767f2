"""The state store: the read model and the archive of every run, in PostgreSQL."""
