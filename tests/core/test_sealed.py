"""Sealed tokens: sealing, opening, per-tenant keys, rotation, masking and encoded forms."""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest

from trellis_core.errors import ConfigError
from trellis_core.sealed import (
    MASK,
    MasterKeyring,
    SealError,
    TenantKeys,
    contains_token,
    encoded_forms,
    is_token,
    mask_tokens,
    new_master_key,
    token_kids,
)

SECRET = "s3cr3t-p@ss/word+"


def test_a_token_opens_back_to_its_value_for_its_tenant_only() -> None:
    ring = MasterKeyring(new_master_key())
    a, b = ring.for_tenant("a"), ring.for_tenant("b")
    token = a.seal(SECRET)
    assert is_token(token)
    assert SECRET not in token
    assert a.open(token) == SECRET
    with pytest.raises(SealError, match="another tenant's, or altered"):
        b.open(token)
    assert a.seal(token) == token  # sealing a token again leaves it


def test_tokens_inside_text_open_and_are_recorded() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("a")
    text = f"postgres://app:{keys.seal(SECRET)}@db/{keys.seal('x' * 3)}"
    opened: set[str] = set()
    assert keys.open_text(text, opened) == f"postgres://app:{SECRET}@db/xxx"
    assert opened == {SECRET, "xxx"}
    nested = {"env": [text], keys.seal("k"): 1}
    assert keys.open_value(nested) == {"env": [f"postgres://app:{SECRET}@db/xxx"], "k": 1}
    assert contains_token(nested)
    assert not contains_token({"a": ["plain"]})
    assert mask_tokens(nested) == {"env": [f"postgres://app:{MASK}@db/{MASK}"], MASK: 1}


def test_an_altered_token_does_not_open() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("a")
    token = keys.seal(SECRET)
    payload = token[len("[[trellis-sealed:v1:12345678:") : -2]
    flipped = payload[:-3] + ("A" if payload[-3] != "A" else "B") + payload[-2:]
    with pytest.raises(SealError, match="altered"):
        keys.open(token.replace(payload, flipped))
    with pytest.raises(SealError, match="not a sealed token"):
        keys.open("plain")


def test_rotation_keeps_old_tokens_opening_and_reseals_them() -> None:
    old_master, new_master = new_master_key(), new_master_key()
    old = MasterKeyring(old_master).for_tenant("a")
    token = old.seal(SECRET)
    rotated = MasterKeyring(new_master, [old_master]).for_tenant("a")
    assert rotated.open(token) == SECRET
    resealed = rotated.reseal_text(f"x={token}")
    assert token_kids(resealed) == {rotated.current} != token_kids(token)
    assert rotated.open_text(resealed) == f"x={SECRET}"
    dropped = MasterKeyring(new_master).for_tenant("a")
    with pytest.raises(SealError, match="which this holder does not have"):
        dropped.open(token)


def test_key_material_travels_to_agents() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("a")
    agent = TenantKeys.from_material(keys.material())
    assert agent.open(keys.seal(SECRET)) == SECRET


@pytest.mark.parametrize(
    ("current", "retired", "message"),
    [
        ("", [], "TRELLIS_SEAL_KEY is not set"),
        ("nope!", [], "not valid base64"),
        (base64.b64encode(b"short").decode(), [], "32 bytes"),
        (new_master_key(), ["bad!"], "RETIRED \\(key 1\\)"),
    ],
    ids=["unset", "not-base64", "too-short", "bad-retired"],  # stable ids: parallel workers must agree
)
def test_bad_master_keys_are_named(current: str, retired: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MasterKeyring(current, retired)


def test_encoded_forms_cover_json_url_and_base64_at_any_alignment() -> None:
    forms = encoded_forms('pa"ss\\word/+==')
    assert json.dumps('pa"ss\\word/+==')[1:-1] in forms
    assert urllib.parse.quote('pa"ss\\word/+==', safe="") in forms
    for prefix in (b"", b"a", b"ab", b"abc"):
        whole = base64.b64encode(prefix + SECRET.encode() + b"tail").decode()
        assert any(form in whole for form in encoded_forms(SECRET) if form != SECRET), prefix
