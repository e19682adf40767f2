"""The root of Trellis's exceptions: raised for bugs and lost connections, caught at service edges."""


class TrellisError(Exception):
    """Base class of Trellis's own exceptions."""


class ConfigError(TrellisError):
    """A setting is missing or invalid; the message names the variable."""


class BusUnavailable(TrellisError):
    """NATS could not be reached; the message names the URL and what to check."""
