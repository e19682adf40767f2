"""Trellis core: the bus messages, subjects, settings, logging and the embedded servers."""
