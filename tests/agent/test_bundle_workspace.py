"""The agent's side of files beside templates: a bundle is fetched from the real object store once
per digest, written into each workspace once, byte-exact with its exec bits, and a bundle that
would write through a symlink or out of the workspace is refused before the command runs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import msgspec
import pytest
from agent_support import RecordingSink, shell, work_item

from trellis_agent.bundles import Bundles, WithBundles
from trellis_agent.executors.base import Outcome, Workspace
from trellis_agent.executors.process import ProcessExecutor
from trellis_core.bus import Bus, get_bundle, put_bundle
from trellis_core.events import BundleFile, WorkItem, bundle_digest, pack_bundle
from trellis_core.ids import new_run_id

HELLO = b"""\
printf '{"blob": "%s", "dir": "%s", "exec": "%s", "note": "%s"}' \\
  "$(sha256sum data/blob.bin | cut -d' ' -f1)" "$TRELLIS_BUNDLE_DIR" \\
  "$(test -x scripts/hello.sh && echo yes)" "$(cat note.txt)" > "$TRELLIS_OUTPUTS"
echo changed-by-the-task > note.txt
"""


TENANT_OF_TEST = "bundles"


class CountingFetch:
    """The real object-store read, counted."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.tenant = TENANT_OF_TEST
        self.digests: list[str] = []

    async def __call__(self, digest: str) -> bytes | None:
        self.digests.append(digest)
        return await get_bundle(self.bus, self.tenant, digest)


def bundled(work: WorkItem, digest: str) -> WorkItem:
    return msgspec.structs.replace(work, activity=msgspec.structs.replace(work.activity, bundle=digest))


async def stored(bus: Bus, *files: BundleFile) -> str:
    digest, blob = pack_bundle(files)
    await put_bundle(bus, TENANT_OF_TEST, digest, blob)
    return digest


async def run(executor: WithBundles, work: WorkItem, data_dir: Path) -> tuple[Outcome, Workspace, RecordingSink]:
    workspace = Workspace.for_work(data_dir, work)
    sink = RecordingSink()
    outcome = await asyncio.wait_for(executor.run(work, workspace, sink), 30)
    return outcome, workspace, sink


async def test_a_bundle_is_fetched_once_per_digest_and_written_once_per_workspace(bus: Bus, tmp_path: Path) -> None:
    blob = os.urandom(5000) + b"\x00\xff\r\n"
    digest = await stored(
        bus,
        BundleFile(path="scripts/hello.sh", mode=0o100755, data=HELLO),
        BundleFile(path="data/blob.bin", data=blob),
        BundleFile(path="note.txt", data=b"as shipped"),
    )
    fetch = CountingFetch(bus)
    executor = WithBundles(ProcessExecutor(inherit_env=("PATH",)), Bundles(fetch))
    run_id = new_run_id()
    first, second = (
        bundled(work_item(shell("sh scripts/hello.sh"), workspace=key, run_id=run_id), digest) for key in ("a", "b")
    )
    results = await asyncio.gather(run(executor, first, tmp_path), run(executor, second, tmp_path))
    assert fetch.digests == [digest]
    for outcome, workspace, _ in results:
        assert outcome.ok, outcome.reason
        assert outcome.outputs == {
            "blob": hashlib.sha256(blob).hexdigest(),
            "dir": str(workspace.root),
            "exec": "yes",
            "note": "as shipped",
        }
        assert (workspace.root / "data" / "blob.bin").read_bytes() == blob
        assert stat.S_IMODE((workspace.root / "scripts" / "hello.sh").stat().st_mode) == 0o755
        assert stat.S_IMODE((workspace.root / "data" / "blob.bin").stat().st_mode) == 0o644

    # The next attempt in workspace "a" sees what the first left there: nothing is written again.
    retry = work_item(shell("sh scripts/hello.sh"), workspace="a", run_id=run_id, attempt=2)
    again, _, _ = await run(executor, bundled(retry, digest), tmp_path)
    assert again.outputs["note"] == "changed-by-the-task"

    # A restarted agent (a new Bundles) finds the bundle in its disk cache.
    restarted = WithBundles(ProcessExecutor(inherit_env=("PATH",)), Bundles(fetch))
    elsewhere = work_item(shell("sh scripts/hello.sh"), workspace="c", run_id=run_id)
    fresh, _, _ = await run(restarted, bundled(elsewhere, digest), tmp_path)
    assert fresh.ok, fresh.reason
    assert fetch.digests == [digest]


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (BundleFile(path="link", mode=stat.S_IFLNK | 0o777, data=b"/etc/passwd"), "'link' is a symlink"),
        (BundleFile(path="../escape.sh", data=b"echo out"), "'../escape.sh' climbs out of the workspace"),
        (BundleFile(path="/tmp/abs.sh", data=b"echo out"), "'/tmp/abs.sh' is not a relative POSIX path"),
        (BundleFile(path=".trellis/bundle", data=b"forged"), "'.trellis/bundle' has a hidden part"),
        (BundleFile(path="setuid", mode=0o104755, data=b""), "'setuid' has setuid"),
    ],
)
async def test_a_bundle_with_a_symlink_or_a_path_out_of_the_workspace_is_refused_before_the_command_runs(
    bus: Bus, tmp_path: Path, bad: BundleFile, why: str
) -> None:
    digest = await stored(bus, BundleFile(path="ok.txt", data=b"fine"), bad)
    executor = WithBundles(ProcessExecutor(inherit_env=("PATH",)), Bundles(CountingFetch(bus)))
    outcome, workspace, sink = await run(executor, bundled(work_item(shell("touch ran")), digest), tmp_path / "ws")
    assert not outcome.ok
    assert not outcome.retryable
    assert why in outcome.reason
    assert digest in outcome.reason
    assert why in sink.text("system")
    assert sorted(p.name for p in workspace.root.iterdir()) == [".trellis"]  # not even ok.txt, and no `ran`
    assert not (tmp_path / "escape.sh").exists()


async def test_a_symlink_already_in_the_workspace_is_never_written_through(bus: Bus, tmp_path: Path) -> None:
    digest = await stored(bus, BundleFile(path="scripts/hello.sh", data=b"echo hi"))
    outside = tmp_path / "outside"
    outside.mkdir()
    work = bundled(work_item(shell("true")), digest)
    workspace = Workspace.for_work(tmp_path / "data", work)
    workspace.root.mkdir(parents=True)
    (workspace.root / "scripts").symlink_to(outside)
    executor = WithBundles(ProcessExecutor(inherit_env=("PATH",)), Bundles(CountingFetch(bus)))
    outcome = await asyncio.wait_for(executor.run(work, workspace, RecordingSink()), 30)
    assert not outcome.ok
    assert "'scripts/hello.sh': the workspace holds a symlink at 'scripts'" in outcome.reason
    assert list(outside.iterdir()) == []


async def test_a_bundle_that_is_missing_or_does_not_match_its_digest_fails_naming_it(bus: Bus, tmp_path: Path) -> None:
    _, blob = pack_bundle([BundleFile(path="a.txt", data=os.urandom(64))])
    forged = bundle_digest(os.urandom(64))
    await put_bundle(bus, TENANT_OF_TEST, forged, blob)  # stored under a digest that is not its own
    missing = bundle_digest(os.urandom(64))
    executor = WithBundles(ProcessExecutor(inherit_env=("PATH",)), Bundles(CountingFetch(bus)))
    mismatch, _, _ = await run(executor, bundled(work_item(shell("true")), forged), tmp_path)
    assert not mismatch.ok
    assert not mismatch.retryable
    assert mismatch.reason == f"bundle {forged} does not match its digest: refused"
    absent, _, _ = await run(executor, bundled(work_item(shell("true")), missing), tmp_path)
    assert not absent.ok
    assert not absent.retryable
    assert absent.reason.startswith(f"bundle {missing} is not in the bundle object store")


async def test_an_activity_without_a_bundle_runs_as_before(tmp_path: Path) -> None:
    async def never(digest: str) -> bytes | None:
        raise AssertionError(f"fetched {digest}")

    executor = WithBundles(ProcessExecutor(inherit_env=("PATH",)), Bundles(never))
    script = """printf '{"dir": "%s"}' "${TRELLIS_BUNDLE_DIR:-none}" > "$TRELLIS_OUTPUTS" """
    outcome, workspace, _ = await run(executor, work_item(shell(script)), tmp_path)
    assert outcome.outputs == {"dir": "none"}
    assert not (workspace.control_dir / "bundle").exists()
