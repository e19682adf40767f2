"""The scheduler service: the bus around trellis_engine, a leader lease and run snapshots."""
