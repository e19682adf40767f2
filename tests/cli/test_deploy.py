"""The deploy manifests parse, their kustomizations name files that exist, and every container
runs a `trellis` command that the CLI really has."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trellis_cli.main import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(DEPLOY)))
def test_every_kustomization_resource_exists_and_parses(kustomization: Path) -> None:
    spec = yaml.safe_load(kustomization.read_text())
    assert spec["resources"]
    for name in spec["resources"]:
        docs = [d for d in yaml.safe_load_all((kustomization.parent / name).read_text()) if d]
        assert docs, f"{name} is empty"
        assert all("kind" in d and "apiVersion" in d for d in docs), name


def test_deployments_run_real_trellis_commands() -> None:
    parser = build_parser()
    for path in DEPLOY.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                args = container.get("args", [])
                # The agent image's entrypoint is `trellis agent`; the control plane's is `trellis`.
                command = list(args) if "control-plane" in str(path) else ["agent", *args]
                parsed = parser.parse_args(command)
                assert callable(parsed.func), f"{path}: {command}"
