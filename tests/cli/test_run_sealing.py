"""`trellis run` on the bus seals the `--var` values the templates declare sensitive (store op
`SealValues`) before publishing, and submits nothing when the store does not seal them.

The store's side of `SealValues` is answered here by a stand-in on the real nats-server that
seals exactly as the contract says (the tenant's key from a master key), so the test checks what
the CLI sends and what it publishes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from rich.console import Console

from trellis_cli import run_cmd
from trellis_cli.run_sealing import sealed_request, to_seal
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.errors import TrellisError
from trellis_core.events import RunRequested, SourceFile
from trellis_core.sealed import MasterKeyring, is_token, new_master_key
from trellis_core.settings import Settings
from trellis_store.api import Reply, Sealed, SealValues, subject_of

CONTEXTS = Path(__file__).resolve().parents[2] / "examples" / "contexts"
SECRET = "hunter2-very-secret"


def _request(tenant: str, **variables: str) -> RunRequested:
    sources = tuple(SourceFile(path=p.name, text=p.read_text()) for p in sorted(CONTEXTS.glob("*.yaml")))
    return RunRequested(
        tenant=tenant, run_id=f"{tenant}-run", environment="analytics-prod", sources=sources, variables=variables
    )


@pytest.fixture
async def store_sealing(bus: Bus) -> AsyncIterator[list[SealValues]]:
    """A stand-in for the store's `SealValues`: what it was asked, answered with real tokens."""
    keyring = MasterKeyring(new_master_key())
    asked: list[SealValues] = []

    async def answer(msg: object) -> None:
        request = msgspec.json.decode(msg.data, type=SealValues)  # type: ignore[attr-defined]
        asked.append(request)
        keys = keyring.for_tenant(request.tenant)
        sealed = Sealed(values={k: keys.seal(v) for k, v in request.values.items()})
        await msg.respond(msgspec.json.encode(Reply(result=msgspec.Raw(msgspec.json.encode(sealed)))))  # type: ignore[attr-defined]

    sub = await bus.nc.subscribe(subject_of(SealValues), cb=answer)
    yield asked
    await sub.unsubscribe()


def test_the_sensitive_variables_of_the_local_templates_are_the_ones_to_seal() -> None:
    request = _request("t", db_password=SECRET, region="us-east-1", sealed_already="")
    assert to_seal(request) == {"db_password": SECRET}
    token = MasterKeyring(new_master_key()).for_tenant("t").seal(SECRET)
    assert to_seal(_request("t", db_password=token)) == {}  # a token stays as it is
    unknown = msgspec.structs.replace(request, environment="no-such-environment")
    assert set(to_seal(unknown)) == {"db_password", "region"}  # unresolvable: nothing goes in clear


async def test_sensitive_values_are_sealed_by_the_store_before_the_request_leaves(
    bus: Bus, store_sealing: list[SealValues], unique: str
) -> None:
    request = _request(unique, db_password=SECRET, region="us-east-1")
    sealed = await sealed_request(bus, request)
    assert [(a.tenant, set(a.values)) for a in store_sealing] == [(unique, {"db_password"})]
    assert is_token(sealed.variables["db_password"])
    assert sealed.variables["region"] == "us-east-1"
    assert SECRET.encode() not in msgspec.json.encode(sealed)


async def test_without_a_store_the_run_is_not_submitted_and_nothing_goes_out_in_clear(
    settings: Settings, unique: str
) -> None:
    own = msgspec.structs.replace(settings, tenant=unique)
    request = _request(unique, db_password=SECRET)
    console = Console(file=io.StringIO())
    with pytest.raises(TrellisError) as raised:
        await run_cmd._run(own, request, console, follow=False, as_document=True)
    message = str(raised.value)
    assert "db_password could not be sealed, so the run was not submitted" in message
    assert "unavailable" in message
    assert SECRET not in message
    bus = await Bus.connect(own, name="tests-check")
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(unique))
    finally:
        await bus.close()
