"""Approval callback tokens: what `verify` accepts and every way it refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trellis_core import callbacks
from trellis_core.errors import ConfigError

KEY = callbacks.key_bytes("k" * 32)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def token(**overrides: object) -> str:
    claims: dict[str, object] = {
        "tenant": "acme",
        "run_id": "r1",
        "activity_id": "env/on-init/gate",
        "attempt": 2,
        "expires_at": NOW + timedelta(hours=1),
    }
    claims.update(overrides)
    return callbacks.mint(KEY, **claims)  # type: ignore[arg-type]


def test_a_minted_token_names_exactly_its_tenant_run_activity_and_attempt() -> None:
    claims = callbacks.verify(KEY, token(), NOW)
    assert isinstance(claims, callbacks.CallbackClaims)
    assert (claims.tenant, claims.run_id, claims.activity_id, claims.attempt) == ("acme", "r1", "env/on-init/gate", 2)
    assert claims.expires_at == NOW + timedelta(hours=1)
    assert claims.token_id != callbacks.verify(KEY, token(), NOW).token_id  # type: ignore[union-attr]


def test_the_url_carries_the_token_under_the_callback_path() -> None:
    t = token()
    assert callbacks.callback_url("https://trellis.example.com/", t) == (
        f"https://trellis.example.com/v1/callbacks/approvals/{t}"
    )


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"), "signature does not match"),
        (lambda t: "x" + t, "signature does not match"),
        (lambda t: t.replace(".", ""), "malformed"),
        (lambda t: t + ".x", "malformed"),
        (lambda t: t + "é", "malformed"),  # not ASCII: refused, never a TypeError
        (lambda t: "é." + t.split(".")[1], "malformed"),
        (lambda t: "a" * 3000, "malformed"),
    ],
)
def test_a_tampered_or_malformed_token_is_refused(mangle, why: str) -> None:  # type: ignore[no-untyped-def]
    result = callbacks.verify(KEY, mangle(token()), NOW)
    assert isinstance(result, str)
    assert why in result


def test_another_key_and_an_expired_token_are_refused() -> None:
    other = callbacks.key_bytes("o" * 32)
    assert callbacks.verify(other, token(), NOW) == "callback token signature does not match"
    assert callbacks.verify(KEY, token(expires_at=NOW), NOW) == "callback token expired"


def test_a_short_key_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="TRELLIS_CALLBACK_KEY"):
        callbacks.key_bytes("short")
