"""Approval callback URLs: one signed, expiring, single-use token per approval attempt dispatched.

The engine asks for `$(approval.callback_url)$` as it renders an approval attempt; the URL points
at the gateway (TRELLIS_GATEWAY_PUBLIC_URL, else its listen address) and is valid for
TRELLIS_CALLBACK_TTL_SECONDS, or the approval's own timeout when that is shorter. With no
TRELLIS_CALLBACK_KEY there is nothing to sign with: the URL is empty, and each run says so once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from trellis_core.callbacks import callback_url, key_bytes, mint
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_core.workflow import Activity

log = get_logger("scheduler.callbacks")


def gateway_base_url(settings: Settings) -> str:
    """Where the outside world reaches the gateway: its public URL, else its listen address."""
    return settings.gateway_public_url or f"http://{settings.gateway_listen}"


class CallbackMinter:
    """The scheduler's `trellis_engine.binding.CallbackMinter`. Raises ConfigError (naming
    TRELLIS_CALLBACK_KEY) when built with a key too short to sign with."""

    def __init__(self, settings: Settings) -> None:
        self.key = key_bytes(settings.callback_key) if settings.callback_key else None
        self.base_url = gateway_base_url(settings)
        self.ttl_seconds = settings.callback_ttl_seconds
        self.warned: set[str] = set()  # runs told that their callback URLs are empty

    def __call__(self, tenant: str, run_id: str, activity: Activity, attempt: int, now: float) -> str:
        if self.key is None:
            if run_id not in self.warned:
                self.warned.add(run_id)
                log.warning(
                    "approval_callback_url_empty",
                    tenant=tenant,
                    run=run_id,
                    activity=activity.id,
                    reason="TRELLIS_CALLBACK_KEY is not set: approval callback URLs render as empty text",
                )
            return ""
        ttl = self.ttl_seconds
        if activity.timeout_seconds:
            ttl = min(ttl, activity.timeout_seconds)
        token = mint(
            self.key,
            tenant=tenant,
            run_id=run_id,
            activity_id=activity.id,
            attempt=attempt,
            expires_at=datetime.fromtimestamp(now + ttl, UTC),
        )
        return callback_url(self.base_url, token)

    def forget(self, run_id: str) -> None:
        """The run is over: a later run of the same id (there is none) would be warned again."""
        self.warned.discard(run_id)
