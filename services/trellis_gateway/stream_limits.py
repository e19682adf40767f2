"""How many server-sent event streams may be open at once: per bearer token and per tenant.

Each open stream holds a JetStream consumer and a connection for as long as the client likes, so
without a cap one token (or one tenant's many) could hold them without bound. Beyond a cap the
gateway answers 429; every stream also ends after MAX_STREAM_SECONDS (clients resume with
Last-Event-ID), so a slot is never held for ever.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MAX_STREAMS_PER_TOKEN = 20
MAX_STREAMS_PER_TENANT = 200
MAX_STREAM_SECONDS = 3600.0  # a stream's lifetime: it ends then; the client resumes with Last-Event-ID
RETRY_AFTER_SECONDS = 5


@dataclass
class StreamLimits:
    """Open streams counted by token id and by tenant, with their caps (attributes: a test or an
    operator's embedding may lower them)."""

    per_token: int = MAX_STREAMS_PER_TOKEN
    per_tenant: int = MAX_STREAMS_PER_TENANT
    lifetime: float = MAX_STREAM_SECONDS
    by_token: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)

    def refusal(self, tenant: str, token_id: str) -> str:
        """Why another stream may not open ("" when it may)."""
        if self.by_token[token_id] >= self.per_token:
            return f"this token has {self.by_token[token_id]} event streams open (at most {self.per_token}); close one"
        if self.by_tenant[tenant] >= self.per_tenant:
            return f"tenant {tenant} has {self.by_tenant[tenant]} event streams open (at most {self.per_tenant})"
        return ""

    @contextmanager
    def held(self, tenant: str, token_id: str) -> Iterator[None]:
        """Count one stream of `token_id` in `tenant` while the block runs (check `refusal` first)."""
        self.by_token[token_id] += 1
        self.by_tenant[tenant] += 1
        try:
            yield
        finally:
            for counter, key in ((self.by_token, token_id), (self.by_tenant, tenant)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]
