"""The workflow object store on the real nats-server, and the size settings' bounds."""

from __future__ import annotations

import hashlib

import pytest

from trellis_core.bus import Bus, get_workflow, put_workflow, stored_workflow
from trellis_core.errors import ConfigError
from trellis_core.events import encode
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow


def a_workflow(unique: str) -> tuple[str, bytes]:
    activity = Activity(id="apply", kind="container", spec=ContainerSpec(command=("true",)))
    blob = encode(Workflow(environment=unique, template=TemplateRef(name="t"), action="deploy", activities=(activity,)))
    return hashlib.sha256(blob).hexdigest(), blob


async def test_a_workflow_is_stored_once_and_read_back_by_digest(bus: Bus, unique: str) -> None:
    digest, blob = a_workflow(unique)
    assert await put_workflow(bus, digest, blob)
    assert not await put_workflow(bus, digest, blob)  # already there
    assert await get_workflow(bus.js, digest, max_bytes=len(blob)) == blob
    assert await get_workflow(bus.js, digest, max_bytes=len(blob) - 1) is None
    stored = await stored_workflow(bus.js, digest)
    assert isinstance(stored, Workflow)
    assert stored.environment == unique


async def test_a_missing_or_tampered_workflow_says_why(bus: Bus, unique: str) -> None:
    digest, blob = a_workflow(unique)
    assert await stored_workflow(bus.js, digest) == (
        f"its workflow {digest!r} is not in the workflow store (or is over {256 * 1024**2} bytes)"
    )
    await put_workflow(bus, digest, blob + b" ")
    assert (
        await stored_workflow(bus.js, digest)
        == f"its workflow {digest!r} in the workflow store does not match that digest"
    )


@pytest.mark.parametrize("value", ["0", str(256 * 1024**2 + 1)])
def test_workflow_max_bytes_out_of_range_names_the_variable(value: str) -> None:
    with pytest.raises(
        ConfigError, match=f"TRELLIS_WORKFLOW_MAX_BYTES={value}: must be greater than 0 and at most 256 MiB"
    ):
        Settings.from_env({"TRELLIS_WORKFLOW_MAX_BYTES": value})
