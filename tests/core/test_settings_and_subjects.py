"""Settings name the variable that is wrong; subjects refuse tokens that would escape a tenant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trellis_core import subjects
from trellis_core.errors import ConfigError
from trellis_core.events import ActivityCompleted, RunRequested, SourceFile, decode_run_event, encode
from trellis_core.ids import uuid7
from trellis_core.settings import Settings


def test_settings_come_from_trellis_variables() -> None:
    settings = Settings.from_env(
        {"TRELLIS_NATS_URL": "nats://10.0.0.1:4222", "TRELLIS_HEARTBEAT_SECONDS": "3", "TRELLIS_DATA_DIR": "/x"}
    )
    assert settings.nats_url == "nats://10.0.0.1:4222"
    assert settings.heartbeat_seconds == 3.0
    assert settings.data_dir == Path("/x")


def test_the_data_dir_is_one_per_user_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).data_dir == tmp_path / "share" / "trellis"
    assert Settings.from_env({"TRELLIS_DATA_DIR": ""}).data_dir == tmp_path / "share" / "trellis"
    assert Settings.from_env({"TRELLIS_DATA_DIR": "~/elsewhere"}).data_dir == Path.home() / "elsewhere"


def test_the_test_suite_never_uses_the_real_per_user_data_dir() -> None:
    real = Path.home() / ".local" / "share" / "trellis"
    assert Path(os.environ["TRELLIS_DATA_DIR"]) != real
    assert Settings.from_env().data_dir != real
    assert Settings.from_env({}).data_dir != real  # the default follows XDG_DATA_HOME, a temp dir here


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"TRELLIS_HEARTBEAT_SECONDS": "soon"}, "TRELLIS_HEARTBEAT_SECONDS"),
        ({"TRELLIS_STREAM_STORAGE": "disk"}, "TRELLIS_STREAM_STORAGE"),
        ({"TRELLIS_NATS_URL": "http://nats:4222"}, "TRELLIS_NATS_URL"),
        ({"TRELLIS_DATABASE_URL": "mysql://db"}, "TRELLIS_DATABASE_URL"),
        ({"TRELLIS_STREAM_REPLICAS": "2"}, "TRELLIS_STREAM_REPLICAS"),
        ({"TRELLIS_HEARTBEAT_TIMEOUT_SECONDS": "1"}, "TRELLIS_HEARTBEAT_TIMEOUT_SECONDS"),
        ({"TRELLIS_MAX_PARALLEL_PER_RUN": "0"}, "TRELLIS_MAX_PARALLEL_PER_RUN"),
        ({"TRELLIS_NATS_CREDS_FILE": "/nonexistent/agent.creds"}, "TRELLIS_NATS_CREDS_FILE"),
        ({"TRELLIS_STACK_WAIT_SECONDS": "0"}, "TRELLIS_STACK_WAIT_SECONDS"),
    ],
)
def test_a_bad_setting_is_an_error_naming_its_variable(environ: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(environ)


@pytest.mark.parametrize("bad", ["a.b", "a*", ">", "a b", "", "x" * 129])
def test_a_token_that_could_cross_subjects_is_refused(bad: str) -> None:
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.work(bad, "pool")


def test_reserved_tenant_names_are_refused() -> None:
    with pytest.raises(subjects.InvalidSubjectToken, match="reserved"):
        subjects.runs_requested("store")


def test_subjects_put_the_tenant_first() -> None:
    assert subjects.work("acme", "gpu", "agent-1") == "trellis.acme.work.gpu.agent-1"
    assert subjects.logs("acme", "r1", "resource/vpc/plan") == "trellis.acme.logs.r1.resource~vpc~plan"
    assert subjects.run_event("acme", "r1", "activity.completed") == "trellis.acme.run.r1.activity.completed"


def test_events_round_trip_through_their_encoding() -> None:
    events = [
        RunRequested(tenant="a", run_id="r", environment="dev", sources=(SourceFile(path="x.yaml", text="k: v"),)),
        ActivityCompleted(tenant="a", run_id="r", activity_id="resource/vpc/apply", attempt=2, outputs={"id": 1}),
    ]
    for event in events:
        assert decode_run_event(encode(event)) == event


def test_dedupe_ids_name_tenant_run_activity_attempt_and_kind() -> None:
    event = ActivityCompleted(tenant="a", run_id="r", activity_id="resource/vpc/apply", attempt=2)
    assert event.msg_id() == "a/r/resource/vpc/apply/2/activity.completed"


def test_uuid7_is_time_ordered_and_version_7() -> None:
    first, second = uuid7(1_000), uuid7(2_000)
    assert first < second
    assert first[14] == "7"


def test_uuid7s_made_within_one_millisecond_still_increase() -> None:
    """Run lists page by run id: ids made in the same millisecond must keep their order."""
    ids = [uuid7() for _ in range(20_000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {i[14] for i in ids} == {"7"}
    assert {i[19] for i in ids} <= set("89ab")  # the RFC 9562 variant


def test_a_message_must_name_the_tenant_and_run_of_its_subject() -> None:
    subject = subjects.run_event("acme", "r1", "activity.completed")
    assert subjects.subject_mismatch(subject, "acme", "r1") == ""
    assert "travels on tenant 'acme'" in subjects.subject_mismatch(subject, "globex", "r1")
    assert "names run 'r2'" in subjects.subject_mismatch(subject, "acme", "r2")
    assert subjects.subject_mismatch(subjects.runs_requested("acme"), "acme") == ""
    assert "not a Trellis subject" in subjects.subject_mismatch("other.acme.x", "acme")


def test_every_trellis_exception_shares_one_root() -> None:
    from trellis_agent.executors.docker import DockerError
    from trellis_core.consume import PermanentError
    from trellis_core.errors import BusUnavailable, ConfigError, TrellisError
    from trellis_engine.binding import RenderError

    for error in (PermanentError, RenderError, DockerError, ConfigError, BusUnavailable):
        assert issubclass(error, TrellisError), error
