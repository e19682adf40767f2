"""Every manifest under deploy/ is valid Kubernetes (kubernetes-validate, strict, against one fixed
Kubernetes version), and the control plane and the agent are deployed to survive a node: every
Deployment runs at least two replicas spread across nodes, with readiness and liveness probes on
/readyz and /healthz at a port the container declares (or listens on with TRELLIS_HEALTH_LISTEN),
resource requests and limits, and a PodDisruptionBudget selecting it; each kustomization lists every
file beside it; the control plane points at every node of the NATS cluster in deploy/nats/values.yaml,
with three stream replicas, and the store at the CloudNativePG cluster of deploy/postgres/cluster.yaml.

Kinds kubernetes-validate has no schema for (custom resources) are checked here against their own
rules, and named in NO_SCHEMA; any other kind without a schema fails."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The oldest Kubernetes the manifests are for (PDB unhealthyPodEvictionPolicy and topology spread
# matchLabelKeys are there from 1.27 on; 1.33 is the oldest release still supported upstream).
KUBERNETES_VERSION = "1.33.0"
HELM_VALUES = DEPLOY / "nats" / "values.yaml"  # values for the NATS chart, not a manifest
CNPG_CLUSTER = DEPLOY / "postgres" / "cluster.yaml"
CONTROL_PLANE = DEPLOY / "control-plane" / "kubernetes"
HEALTH_PATHS = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

Doc = dict[str, Any]


def docs_of(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def manifest_files() -> list[Path]:
    return [p for p in yaml_files() if p.name != "kustomization.yaml" and p != HELM_VALUES]


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def rel(path: Path) -> str:
    return str(path.relative_to(DEPLOY))


# --- custom resources: their own rules ------------------------------------------------------------

# The Cluster's spec fields (CloudNativePG's CRD, postgresql.cnpg.io/v1): anything else is a typo.
CNPG_SPEC_FIELDS = frozenset(
    [
        "affinity", "backup", "bootstrap", "certificates", "description", "enablePDB", "enableSuperuserAccess",
        "env", "envFrom", "ephemeralVolumeSource", "ephemeralVolumesSizeLimit", "externalClusters", "failoverDelay",
        "imageCatalogRef", "imageName", "imagePullPolicy", "imagePullSecrets", "inheritedMetadata", "instances",
        "livenessProbeTimeout", "logLevel", "managed", "maxSyncReplicas", "minSyncReplicas", "monitoring",
        "nodeMaintenanceWindow", "plugins", "podSecurityContext", "podSelectorRefs", "postgresGID", "postgresUID",
        "postgresql", "primaryLease", "primaryUpdateMethod", "primaryUpdateStrategy", "priorityClassName", "probes",
        "projectedVolumeTemplate", "replica", "replicationSlots", "resources", "schedulerName", "seccompProfile",
        "securityContext", "serviceAccountName", "serviceAccountTemplate", "smartShutdownTimeout", "startDelay",
        "stopDelay", "storage", "superuserSecret", "switchoverDelay", "tablespaces", "topologySpreadConstraints",
        "walStorage",
    ]
)
CNPG_INITDB_FIELDS = frozenset(
    [
        "builtinLocale", "dataChecksums", "database", "encoding", "icuLocale", "icuRules", "import", "locale",
        "localeCType", "localeCollate", "localeProvider", "options", "owner", "postInitApplicationSQL",
        "postInitApplicationSQLRefs", "postInitSQL", "postInitSQLRefs", "postInitTemplateSQL",
        "postInitTemplateSQLRefs", "secret", "walSegmentSize",
    ]
)


def cnpg_cluster_problems(doc: Doc) -> list[str]:
    """CloudNativePG's `Cluster`: the CRD's required fields (metadata, spec, spec.instances >= 1),
    storage with a size, an initdb bootstrap naming its database, owner and owner secret."""
    problems: list[str] = []
    meta, spec = doc.get("metadata") or {}, doc.get("spec")
    if not DNS_LABEL.match(str(meta.get("name", ""))):
        problems.append("metadata.name: missing or not a DNS label")
    if not isinstance(spec, dict):
        return [*problems, "spec: required"]
    if not isinstance(spec.get("instances"), int) or spec["instances"] < 1:
        problems.append("spec.instances: required, an integer >= 1")
    problems += [f"spec.{k}: not a field of Cluster" for k in sorted(set(spec) - CNPG_SPEC_FIELDS)]
    size = (spec.get("storage") or {}).get("size")
    if not (isinstance(size, str) and QUANTITY.match(size)):
        problems.append("spec.storage.size: required, a quantity such as 20Gi")
    initdb = ((spec.get("bootstrap") or {}).get("initdb")) or {}
    problems += [f"spec.bootstrap.initdb.{k}: not a field" for k in sorted(set(initdb) - CNPG_INITDB_FIELDS)]
    for field in ("database", "owner"):
        if not initdb.get(field):
            problems.append(f"spec.bootstrap.initdb.{field}: required here")
    if not (initdb.get("secret") or {}).get("name"):
        problems.append("spec.bootstrap.initdb.secret.name: required (the owner's basic-auth Secret)")
    return problems


NO_SCHEMA: dict[tuple[str, str], Callable[[Doc], list[str]]] = {
    ("postgresql.cnpg.io/v1", "Cluster"): cnpg_cluster_problems,
}


# --- what a Deployment needs to survive a node ------------------------------------------------------


def env_of(container: Doc, bundle: list[Doc]) -> dict[str, str]:
    """The container's environment as far as the manifests say: ConfigMaps of `bundle` named in
    envFrom, then `env` (plain values; a value from a Secret shows as `<secret NAME/KEY>`)."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in bundle if d.get("kind") == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps.get(source["configMapRef"]["name"], {}))
    for var in container.get("env", []):
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        env[var["name"]] = f"<secret {ref['name']}/{ref['key']}>" if ref else str(var.get("value", ""))
    return env


def probe_port_problem(container: Doc, env: dict[str, str], probe: str) -> str | None:
    spec = container.get(probe)
    if not spec:
        return f"no {probe}"
    get = spec.get("httpGet") or {}
    if get.get("path") != HEALTH_PATHS[probe]:
        return f"{probe} is not GET {HEALTH_PATHS[probe]}"
    port = get.get("port")
    declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    number = declared.get(port) if isinstance(port, str) else port
    listens = {int(v.rpartition(":")[2]) for k, v in env.items() if k.endswith("_LISTEN") and v[-1:].isdigit()}
    if number is None or number not in set(declared.values()) | listens:
        return f"{probe} port {port!r} is neither a declared containerPort nor where it listens"
    if number not in listens and "TRELLIS_HEALTH_LISTEN" not in env and "TRELLIS_GATEWAY_LISTEN" not in env:
        return f"{probe} port {number}: nothing listens there (set TRELLIS_HEALTH_LISTEN)"
    return None


def matches(selector: Doc, labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def deployment_problems(deployment: Doc, bundle: list[Doc]) -> list[str]:
    name = deployment["metadata"]["name"]
    spec = deployment["spec"]
    pod = spec["template"]
    labels = pod["metadata"].get("labels", {})
    problems: list[str] = []
    if spec.get("replicas", 1) < 2:
        problems.append(f"{name}: {spec.get('replicas', 1)} replica(s), at least 2 wanted")
    pdbs = [
        d for d in bundle if d.get("kind") == "PodDisruptionBudget" and matches(d["spec"].get("selector", {}), labels)
    ]
    if not pdbs:
        problems.append(f"{name}: no PodDisruptionBudget selects it")
    elif any(p["spec"].get("minAvailable") != 1 for p in pdbs):
        problems.append(f"{name}: its PodDisruptionBudget is not minAvailable 1")
    spread = [
        c for c in pod["spec"].get("topologySpreadConstraints", [])
        if c.get("topologyKey") == "kubernetes.io/hostname" and matches(c.get("labelSelector", {}), labels)
    ]
    if not spread:
        problems.append(f"{name}: not spread across nodes (no kubernetes.io/hostname topology spread on its pods)")
    for container in pod["spec"]["containers"]:
        where = f"{name}/{container['name']}"
        env = env_of(container, bundle)
        for probe in HEALTH_PATHS:
            why = probe_port_problem(container, env, probe)
            if why:
                problems.append(f"{where}: {why}")
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if not {"cpu", "memory"} <= set(requests):
            problems.append(f"{where}: resources.requests needs cpu and memory")
        if "memory" not in limits:
            problems.append(f"{where}: resources.limits needs memory")
    return problems


def bundle_of(kustomization: Path) -> list[Doc]:
    spec = yaml.safe_load(kustomization.read_text())
    return [d for name in spec["resources"] for d in docs_of(kustomization.parent / name)]


def deployments(bundle: list[Doc]) -> Iterator[Doc]:
    return (d for d in bundle if d.get("kind") == "Deployment")


# --- the tests ----------------------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_is_a_manifest_a_kustomization_or_the_helm_values() -> None:
    assert HELM_VALUES.exists()
    assert CNPG_CLUSTER in manifest_files()
    for path in manifest_files():
        docs = docs_of(path)
        assert docs, f"{rel(path)} is empty"
        for doc in docs:
            assert isinstance(doc, dict), rel(path)
            assert doc.get("apiVersion"), rel(path)
            assert doc.get("kind"), rel(path)


@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in docs_of(path):
        what = f"{rel(path)}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            check = NO_SCHEMA.get((doc["apiVersion"], doc["kind"]))
            assert check is not None, f"{what}: no schema for {doc['apiVersion']} {doc['kind']} and no rules here"
            assert check(doc) == [], what
        except jsonschema.ValidationError as exc:  # kubernetes_validate's own, or jsonschema's as it is
            pytest.fail(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("kustomization", kustomizations(), ids=lambda p: rel(p.parent))
def test_kustomization_lists_every_file_beside_it(kustomization: Path) -> None:
    spec = yaml.safe_load(kustomization.read_text())
    assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert spec["kind"] == "Kustomization"
    beside = {p.name for p in kustomization.parent.iterdir() if p.suffix in (".yaml", ".yml")} - {kustomization.name}
    assert sorted(spec["resources"]) == sorted(beside)


@pytest.mark.parametrize("kustomization", kustomizations(), ids=lambda p: rel(p.parent))
def test_every_deployment_survives_a_node(kustomization: Path) -> None:
    bundle = bundle_of(kustomization)
    found = list(deployments(bundle))
    assert found
    assert [p for d in found for p in deployment_problems(d, bundle)] == []


def test_the_checks_fail_without_a_probe_a_pdb_replicas_or_limits() -> None:
    """The checks above are not vacuous: each thing removed from the real manifests is named."""
    bundle = bundle_of(CONTROL_PLANE / "kustomization.yaml")

    def problems_after(change: Callable[[list[Doc]], None]) -> list[str]:
        changed = copy.deepcopy(bundle)
        change(changed)
        return [p for d in deployments(changed) for p in deployment_problems(d, changed)]

    def container(docs: list[Doc], name: str) -> Doc:
        deployment = next(d for d in deployments(docs) if d["metadata"]["name"] == name)
        return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]

    assert problems_after(lambda d: None) == []
    assert problems_after(lambda d: container(d, "trellis-compiler").pop("readinessProbe")) == [
        "trellis-compiler/compiler: no readinessProbe"
    ]
    assert problems_after(lambda d: container(d, "trellis-store").pop("livenessProbe")) == [
        "trellis-store/store: no livenessProbe"
    ]
    assert problems_after(lambda d: d.remove(next(x for x in d if x["kind"] == "PodDisruptionBudget"))) == [
        "trellis-compiler: no PodDisruptionBudget selects it"
    ]

    def health_port_undeclared(d: list[Doc]) -> None:
        c = container(d, "trellis-scheduler")
        c["ports"] = []
        c["env"] = [v for v in c["env"] if v["name"] != "TRELLIS_HEALTH_LISTEN"]

    undeclared = "port 'health' is neither a declared containerPort nor where it listens"
    assert problems_after(health_port_undeclared) == [
        f"trellis-scheduler/scheduler: readinessProbe {undeclared}",
        f"trellis-scheduler/scheduler: livenessProbe {undeclared}",
    ]
    assert problems_after(lambda d: next(deployments(d))["spec"].update(replicas=1)) == [
        "trellis-compiler: 1 replica(s), at least 2 wanted"
    ]
    assert problems_after(lambda d: container(d, "trellis-gateway")["resources"].pop("limits")) == [
        "trellis-gateway/gateway: resources.limits needs memory"
    ]
    assert problems_after(lambda d: next(deployments(d))["spec"]["template"]["spec"].pop("topologySpreadConstraints"))


def test_the_cnpg_rules_name_what_is_wrong() -> None:
    (cluster,) = docs_of(CNPG_CLUSTER)
    assert cnpg_cluster_problems(cluster) == []
    broken = copy.deepcopy(cluster)
    del broken["spec"]["instances"], broken["spec"]["storage"]
    broken["spec"]["instance"] = 3
    assert cnpg_cluster_problems(broken) == [
        "spec.instances: required, an integer >= 1",
        "spec.instance: not a field of Cluster",
        "spec.storage.size: required, a quantity such as 20Gi",
    ]


def test_the_control_plane_uses_every_nats_node_and_three_replicas() -> None:
    values = yaml.safe_load(HELM_VALUES.read_text())
    cluster, jetstream = values["config"]["cluster"], values["config"]["jetstream"]
    assert (cluster["enabled"], cluster["replicas"]) == (True, 3)
    assert (jetstream["enabled"], jetstream["memoryStore"]["enabled"]) == (True, False)
    file_store = jetstream["fileStore"]
    assert (file_store["enabled"], file_store["pvc"]["enabled"]) == (True, True)
    assert QUANTITY.match(file_store["pvc"]["size"])
    name, namespace = values["fullnameOverride"], "trellis-system"
    nodes = [f"nats://{name}-{i}.{name}-headless.{namespace}.svc:4222" for i in range(cluster["replicas"])]

    bundle = bundle_of(CONTROL_PLANE / "kustomization.yaml")
    for deployment in deployments(bundle):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = env_of(container, bundle)
            assert env["TRELLIS_NATS_URL"].split(",") == nodes, deployment["metadata"]["name"]
            assert env["TRELLIS_STREAM_REPLICAS"] == "3", deployment["metadata"]["name"]
    assert yaml.safe_load((CONTROL_PLANE / "kustomization.yaml").read_text())["namespace"] == namespace


def test_the_store_points_at_the_cnpg_cluster_and_its_owner_secret() -> None:
    (cluster,) = docs_of(CNPG_CLUSTER)
    assert cluster["spec"]["instances"] == 3
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"]) == ("trellis", "trellis")
    bundle = bundle_of(CONTROL_PLANE / "kustomization.yaml")
    store = next(d for d in deployments(bundle) if d["metadata"]["name"] == "trellis-store")
    env = env_of(store["spec"]["template"]["spec"]["containers"][0], bundle)
    url = urlsplit(env["TRELLIS_DATABASE_URL"])
    assert url.scheme == "postgresql"
    assert url.hostname == f"{cluster['metadata']['name']}-rw.{cluster['metadata']['namespace']}.svc"
    assert (url.port, url.path) == (5432, f"/{initdb['database']}")
    assert (url.username, url.password) == (None, None)  # from PGUSER / PGPASSWORD, never in the URL
    secret = initdb["secret"]["name"]
    assert env["PGUSER"] == f"<secret {secret}/username>"
    assert env["PGPASSWORD"] == f"<secret {secret}/password>"
