"""The agent's configuration and its Kubernetes manifests say what they promise."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from trellis_agent.config import AgentConfig
from trellis_cli import agent_cmd
from trellis_core.errors import ConfigError

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "agent" / "kubernetes"


def _documents() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_the_role_is_namespaced_and_limited_to_pods_logs_secrets_and_claims() -> None:
    docs = _documents()
    role = docs["Role"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "pods/log", "secrets", "persistentvolumeclaims"}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert "ClusterRole" not in docs
    binding = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]


def test_the_deployment_runs_the_agent_non_root_under_its_service_account() -> None:
    docs = _documents()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "kubernetes" in container["args"]
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_the_dockerfile_runs_as_a_non_root_user_with_git() -> None:
    text = (MANIFESTS.parent / "Dockerfile").read_text()
    assert "USER 10001" in text
    assert " git " in text


def test_settings_come_from_trellis_agent_variables_and_flags_win() -> None:
    config = AgentConfig.from_env(
        {
            "TRELLIS_AGENT_CONCURRENCY": "3",
            "TRELLIS_AGENT_ID": "agent-1",
            "TRELLIS_AGENT_POOL": "p",
            "TRELLIS_AGENT_DATA_DIR": "/srv/trellis",
        },
        pool="q",
        concurrency=None,
    )
    assert (config.concurrency, config.agent_id, config.pool) == (3, "agent-1", "q")
    assert config.workspaces(Path("/unused")) == Path("/srv/trellis")
    assert AgentConfig.from_env({}).workspaces(Path("/data")) == Path("/data/agent")


def test_a_bad_setting_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="TRELLIS_AGENT_CONCURRENCY"):
        AgentConfig.from_env({"TRELLIS_AGENT_CONCURRENCY": "0"})


def test_the_cli_command_parses_tenant_pool_concurrency_and_executor() -> None:
    parser = argparse.ArgumentParser()
    agent_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        ["agent", "--tenant", "acme", "--pool", "gpu", "--concurrency", "2", "--executor", "docker"]
    )
    assert (args.tenant, args.pool, args.concurrency, args.executor) == ("acme", "gpu", 2, "docker")
    assert args.func is agent_cmd.run_agent


def test_the_cli_refuses_to_start_without_a_nats_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRELLIS_NATS_URL", raising=False)
    # structlog would keep printing to this test's captured (then closed) stderr.
    monkeypatch.setattr("trellis_core.logs.configure", lambda settings: None)
    parser = argparse.ArgumentParser()
    agent_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["agent", "--tenant", "acme", "--pool", "p"])
    assert args.func(args) == 1
    assert "TRELLIS_NATS_URL" in capsys.readouterr().err


def test_the_heartbeat_follows_the_shared_setting_unless_the_agent_sets_its_own() -> None:
    assert AgentConfig.from_env({}).with_defaults_from(heartbeat_seconds=0.5).heartbeat_seconds == 0.5
    own = AgentConfig.from_env({"TRELLIS_AGENT_HEARTBEAT_SECONDS": "3"})
    assert own.with_defaults_from(heartbeat_seconds=0.5).heartbeat_seconds == 3.0
