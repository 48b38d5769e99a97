"""deploy/: the image lints clean, and every kustomization renders and validates offline.

Built-in kinds are validated strictly against Kubernetes' own schemas (kubernetes-validate,
offline); the RayCluster against KubeRay's CRD with unknown fields rejected, and the pod
templates inside it as pod templates. Kinds with no schema here (PodMonitor, KEDA's) are
checked for what vlmq depends on: their selectors, ports, Secrets and stream names match the
rest of the deployment. The options each container passes to `vlmq` parse with the real CLI.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.cli import main as vlmq_cli
from orchestrator.redis_keys import CONSUMER_GROUP, RedisKeys

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
# The Kubernetes release the manifests must be valid for (kubernetes-validate ships it).
KUBERNETES_VERSION = "1.31"
BUILTIN_KINDS = {
    "ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Service",
    "StatefulSet",
}
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH: rendering with kustomize needs it (deploy/README.md)",
)

Manifest = dict[str, Any]


def kustomizations() -> list[str]:
    return sorted(
        str(path.parent.relative_to(DEPLOY)) for path in DEPLOY.rglob("kustomization.yaml")
    )


@functools.cache
def render(kustomization: str) -> tuple[Manifest, ...]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / kustomization)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def one(kustomization: str, kind: str, name: str | None = None) -> Manifest:
    found = [
        doc for doc in render(kustomization)
        if doc["kind"] == kind and name in (None, doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"{kustomization}: {len(found)} {kind} {name or ''}"
    return found[0]


def crd_directory() -> Path:
    """The in-repo copy, so a clean clone needs nothing beside it; else ../shared's."""
    in_repo = DEPLOY / "crds"
    return in_repo if in_repo.is_dir() else REPO.parent / "shared" / "kuberay-crds"


def forbid_unknown_fields(schema: Any) -> Any:
    """KubeRay's CI does the same: an object that lists its properties takes no others,
    unless the CRD says it keeps unknown fields or already says what extra keys hold."""
    if isinstance(schema, dict):
        schema = {key: forbid_unknown_fields(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields", False)
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [forbid_unknown_fields(item) for item in schema]
    return schema


@functools.cache
def ray_validator(kind: str, version: str = "v1") -> jsonschema.Draft7Validator:
    for path in sorted(crd_directory().glob("ray.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != kind:
            continue
        for served in crd["spec"]["versions"]:
            if served["name"] == version:
                schema = forbid_unknown_fields(served["schema"]["openAPIV3Schema"])
                return jsonschema.Draft7Validator(schema)
    raise LookupError(f"no CRD for ray.io/{version} {kind} in {crd_directory()}")


def ray_errors(manifest: Manifest) -> list[str]:
    validator = ray_validator(manifest["kind"], manifest["apiVersion"].split("/")[1])
    return sorted(
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(manifest)
    )


def validate_builtin(manifest: Manifest) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def ray_pod_templates(cluster: Manifest) -> Iterator[tuple[str, Manifest]]:
    spec = cluster["spec"]
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def validate_pod_template(name: str, template: Manifest) -> None:
    """A pod template inside a custom resource, checked as the PodTemplate it stands for."""
    validate_builtin(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
         "template": template}
    )


def pod_templates(kustomization: str) -> Iterator[tuple[Manifest, Manifest]]:
    """(labels as the running pod will carry them, pod template) of every workload."""
    for doc in render(kustomization):
        if doc["kind"] == "RayCluster":
            # KubeRay adds these labels to the pods it makes (the PodMonitors select by them).
            for group, template in ray_pod_templates(doc):
                node_type = "head" if group == "head" else "worker"
                labels = {
                    **template.get("metadata", {}).get("labels", {}),
                    "ray.io/cluster": doc["metadata"]["name"], "ray.io/node-type": node_type,
                }
                yield labels, template
        elif doc["kind"] in {"Deployment", "StatefulSet"}:
            template = doc["spec"]["template"]
            yield template["metadata"]["labels"], template


def matches(selector: Manifest, labels: Manifest) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def containers(template: Manifest) -> list[Manifest]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def vlmq_invocations(kustomization: str) -> Iterator[list[str]]:
    """The `vlmq` command line of every container that runs one."""
    for _, template in pod_templates(kustomization):
        for container in containers(template):
            command = [*container.get("command", []), *container.get("args", [])]
            if command[:1] == ["vlmq"]:
                yield command[1:]
            elif "exec vlmq serve \"$@\"" in " ".join(command):
                # bash -c '... exec vlmq serve "$@"' NAME ARGS...: the args follow the name.
                yield ["serve", *container["args"]]


# Rendering and validation.


@needs_kubectl
@pytest.mark.parametrize("kustomization", kustomizations())
def test_every_manifest_renders_and_validates(kustomization: str) -> None:
    rendered = render(kustomization)
    assert rendered
    for doc in rendered:
        kind = doc["kind"]
        if kind in BUILTIN_KINDS:
            validate_builtin(doc)
        elif doc["apiVersion"] == "ray.io/v1":
            assert ray_errors(doc) == [], doc["metadata"]["name"]
            for group, template in ray_pod_templates(doc):
                validate_pod_template(group, template)
        elif kind == "PodMonitor":
            check_pod_monitor(kustomization, doc)
        elif kind == "ScaledObject":
            check_scaled_object(kustomization, doc)
        elif kind == "TriggerAuthentication":
            assert [ref["parameter"] for ref in doc["spec"]["secretTargetRef"]] == ["password"]
        else:
            pytest.fail(f"{kustomization}: no check for kind {kind}; add one here")


def test_the_kustomizations_are_the_ones_documented() -> None:
    assert kustomizations() == [
        "base", "optional/keda", "optional/vision-group", "overlays/dev", "overlays/gpu"
    ]


@needs_kubectl
def test_a_misspelled_ray_field_fails_validation() -> None:
    cluster = one("overlays/gpu", "RayCluster")
    assert ray_errors(cluster) == []
    for right, wrong in [("rayStartParams", "rayStartParam"), ("replicas", "replica")]:
        misspelled = copy.deepcopy(cluster)
        group = misspelled["spec"]["workerGroupSpecs"][0]
        group[wrong] = group.pop(right)
        assert ray_errors(misspelled) == [
            f"spec.workerGroupSpecs.0: Additional properties are not allowed "
            f"('{wrong}' was unexpected)"
        ]
    # Inside the pod template too, which KubeRay's schema spells out in full.
    misspelled = copy.deepcopy(cluster)
    misspelled["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"
    (error,) = ray_errors(misspelled)
    assert error.startswith("spec.headGroupSpec.template.spec.containers.0: ")
    assert "'imag' was unexpected" in error


@needs_kubectl
def test_a_misspelled_builtin_field_fails_validation() -> None:
    statefulset = copy.deepcopy(one("base", "StatefulSet"))
    validate_builtin(statefulset)
    statefulset["spec"]["replica"] = statefulset["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        validate_builtin(statefulset)
    head = copy.deepcopy(one("base", "RayCluster")["spec"]["headGroupSpec"]["template"])
    head["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
        validate_pod_template("head", head)


# What vlmq depends on, across manifests.


def check_pod_monitor(kustomization: str, monitor: Manifest) -> None:
    """It selects Ray pods that declare each port it scrapes, with the Ray token."""
    cluster = one(kustomization, "RayCluster")
    selected = [
        template for labels, template in pod_templates(kustomization)
        if matches(monitor["spec"]["selector"], labels)
    ]
    assert selected, monitor["metadata"]["name"]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for template in selected:
            ports = {p["name"] for c in containers(template) for p in c.get("ports", [])}
            assert endpoint["port"] in ports
        credentials = endpoint["authorization"]["credentials"]
        assert endpoint["authorization"]["type"] == "Bearer"
        assert credentials == {
            "name": cluster["spec"]["authOptions"]["secretName"], "key": "auth_token"
        }


def check_scaled_object(kustomization: str, scaled: Manifest) -> None:
    """Lag and pending entries of each lane of the queue `default`, through vlmq's group."""
    target = one(kustomization, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    env = {e["name"] for c in containers(target["spec"]["template"]) for e in c.get("env", [])}
    lanes = [RedisKeys("vlmq").queue("default").lane(priority) for priority in (0, 1, 2)]
    seen: dict[str, set[str]] = {lane: set() for lane in lanes}
    for trigger in scaled["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert metadata["consumerGroup"] == CONSUMER_GROUP
        assert metadata["usernameFromEnv"] in env
        if "lagCount" in metadata:
            assert "activationLagCount" in metadata
            seen[metadata["stream"]].add("lag")
        if "pendingEntriesCount" in metadata:
            seen[metadata["stream"]].add("pending")
    assert seen == {lane: {"lag", "pending"} for lane in lanes}


@needs_kubectl
@pytest.mark.parametrize("kustomization", kustomizations())
def test_only_vlmq_pods_reach_redis(kustomization: str) -> None:
    base = one("base", "NetworkPolicy", "vlmq-redis")
    (client_selector,) = [source["podSelector"] for source in base["spec"]["ingress"][0]["from"]]
    for labels, template in pod_templates(kustomization):
        runs_vlmq = any(
            c["image"].split("/")[-1].startswith("vlmq:") for c in containers(template)
        )
        if runs_vlmq:
            assert matches(client_selector, labels), labels
        if labels.get("app.kubernetes.io/name") == "redis":
            assert matches(base["spec"]["podSelector"], labels)
            assert not matches(client_selector, labels)


@needs_kubectl
@pytest.mark.parametrize(
    "kustomization", ["overlays/dev", "overlays/gpu", "optional/keda", "optional/vision-group"]
)
def test_every_vlmq_command_line_parses(kustomization: str, tmp_path: Path) -> None:
    """With the real CLI: a misspelled option or a bad value in a manifest fails here."""
    invocations = list(vlmq_invocations(kustomization))
    assert any(argv[0] == "serve" for argv in invocations)
    for invocation in invocations:
        # Paths inside the image stand for a directory that exists here.
        name, *argv = [str(tmp_path) if arg.startswith("/") else arg for arg in invocation]
        command = vlmq_cli.get_command(click.Context(vlmq_cli), name)
        assert command is not None, name
        command.make_context(name, argv)


@needs_kubectl
def test_the_ray_cluster_is_configured_as_vlmq_needs() -> None:
    for kustomization in ("overlays/dev", "overlays/gpu"):
        spec = one(kustomization, "RayCluster")["spec"]
        assert spec["authOptions"]["mode"] == "token"
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["autoscalerOptions"]["version"] == "v2"
        env = {e["name"]: e["value"] for e in spec["autoscalerOptions"]["env"]}
        assert int(env["RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S"]) < 3600
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "0"
        assert "nvidia.com/gpu" not in str(head["template"])
        # The overlays patch lists by index: each patched volume must still be the right one.
        for template in [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
            if kustomization == "overlays/gpu":
                assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "vlmq-models"
            else:
                assert volumes["models"] == {"name": "models", "emptyDir": {}}
                (init,) = template["spec"]["initContainers"]
                assert init["command"][:2] == ["vlmq", "make-tiny-model"]
                assert init["command"][-1].startswith("/models/")
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["maxReplicas"]
            worker = group["template"]["spec"]["containers"][0]
            assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
            if kustomization == "overlays/gpu":
                assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
                assert group["template"]["spec"]["tolerations"]
            else:
                assert "nvidia.com/gpu" not in str(group)
                assert int(group["rayStartParams"]["num-gpus"]) >= 1


@needs_kubectl
def test_the_vision_group_offers_exactly_what_the_vision_actors_ask_for() -> None:
    """The resource and node label `vlmq serve` asks for are offered by the vision group
    alone (else the vision actors would never start, or run beside the generators)."""
    (serve,) = [argv for argv in vlmq_invocations("optional/vision-group") if argv[0] == "serve"]
    command = vlmq_cli.get_command(click.Context(vlmq_cli), "serve")
    assert command is not None
    argv = ["/" if arg.startswith("/") else arg for arg in serve[1:]]
    params = command.make_context("serve", argv).params
    assert params["vision_resources"] == {"vision_gpu": 1.0}
    assert params["vision_labels"] == {"vlmq.io/pool": "vision"}
    assert params["gpus_per_vision_actor"] == 1.0
    groups = {g["groupName"]: g for g in one("optional/vision-group", "RayCluster")["spec"][
        "workerGroupSpecs"]}
    assert set(groups) == {"gpu", "vision"}
    vision = groups["vision"]
    assert {k: float(v) for k, v in vision["resources"].items()} == params["vision_resources"]
    assert vision["labels"] == params["vision_labels"]
    assert "resources" not in groups["gpu"] and "labels" not in groups["gpu"]
    limits = vision["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"  # the whole GPU each vision actor asks for
    volumes = {v["name"]: v for v in vision["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "vlmq-models"


@needs_kubectl
def test_redis_is_persistent_unevicting_and_keeps_its_password_off_command_lines() -> None:
    config = one("base", "ConfigMap", "vlmq-redis-config")["data"]["redis.conf"].splitlines()
    assert "appendonly yes" in config
    assert "maxmemory-policy noeviction" in config
    statefulset = one("base", "StatefulSet", "vlmq-redis")
    template = statefulset["spec"]["template"]
    assert statefulset["spec"]["volumeClaimTemplates"]
    (redis,) = template["spec"]["containers"]
    assert redis["image"].startswith("redis:7.")
    assert redis["command"] == ["redis-server", "/config/redis.conf"]
    assert redis["livenessProbe"] and redis["readinessProbe"]
    for container in containers(template):
        assert "requirepass" not in str(container)
        assert not any(e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", []))


# Linters.


def tool(name: str) -> str:
    """A linter installed with the dev extra: beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found is not None, f"{name} is not installed: scripts/setup installs the dev extra"
    return found


def test_the_yaml_in_deploy_lints_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(DEPLOY / ".yamllint.yaml"),
         str(DEPLOY)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_lints_clean() -> None:
    done = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", "--no-color",
         str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, check=False, timeout=60, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_builds_what_the_brief_of_the_image_says() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    (base,) = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert base.startswith("rayproject/ray:2.60.") and "-cu12" in base
    assert 'ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"' in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in {"0", "root"}
    assert '".[gpu]"' in text
