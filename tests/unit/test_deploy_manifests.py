"""The deployment files, checked without Docker, kubectl or kustomize (CI has none of them).

- every YAML file under deploy/ parses and passes yamllint (`.yamllint.yaml`);
- every Kubernetes manifest validates against the Kubernetes schemas shipped by the package
  kubernetes-validate (offline, strict: unknown fields are errors);
- each kustomization is rendered by the small renderer below (it applies `resources`,
  `namespace` and `images`, and refuses any other field, so it never silently differs from
  kustomize) and the result is checked as a whole: references between resources, probes,
  grace periods, rolling updates, security settings;
- every MAIL_* variable set anywhere is a setting of one of the services, with a valid value;
- compose.yaml has the whole stack with the settings of `make run`;
- the Dockerfile runs as a non-root user, installs from uv.lock only, and every command that
  the image, the manifests and compose.yaml run works, without the dev dependencies.
"""

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from cryptography.fernet import Fernet
from pydantic_settings import BaseSettings
from yamllint import linter
from yamllint.config import YamlLintConfig

from services.config_svc.settings import ConfigSettings
from services.dispatcher.settings import DispatcherSettings
from services.sender.settings import SenderSettings
from tests.unit.test_readme import all_settings_classes

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"

# The Kubernetes release the manifests are checked against (kubernetes-validate ships the
# schemas of several releases; only stable APIs are used, so older clusters take them too).
KUBERNETES_VERSION = "1.30"

YAML_FILES = sorted(path for path in DEPLOY.rglob("*") if path.suffix in {".yaml", ".yml"})
MANIFESTS = [path for path in YAML_FILES
             if path.is_relative_to(K8S) and path.name != "kustomization.yaml"]

# Deployment -> (settings class, module, replicas, HTTP port): the README and the issue.
SERVICES: dict[str, tuple[type[BaseSettings], str, int, int]] = {
    "config-svc": (ConfigSettings, "services.config_svc", 2, 8080),
    "dispatcher": (DispatcherSettings, "services.dispatcher", 2, 8081),
    "sender": (SenderSettings, "services.sender", 3, 8082),
}
MIGRATION_ORDER = ["services.config_svc", "services.dispatcher", "services.sender"]
SECRET_SETTINGS = {"MAIL_JWT_SECRET", "MAIL_FERNET_KEYS", "MAIL_POSTGRES_DSN"}
# Each Deployment takes its MAIL_AMQP_URL (its own RabbitMQ user) from one of these keys.
AMQP_URL_KEYS = {"amqp-url-config-svc", "amqp-url-dispatcher", "amqp-url-sender"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def setting_names() -> set[str]:
    return {f"MAIL_{name.upper()}" for cls in all_settings_classes() for name in cls.model_fields}


def build_settings(cls: type[BaseSettings], env: dict[str, str]) -> BaseSettings:
    """The settings `cls` would read from `env` (its MAIL_* entries), validated."""
    fields = {f"MAIL_{name.upper()}": name for name in cls.model_fields}
    return cls(**{fields[key]: value for key, value in env.items() if key in fields})


# --- YAML ----------------------------------------------------------------------------------


def test_the_deploy_files_are_there() -> None:
    assert COMPOSE in YAML_FILES
    assert BASE / "kustomization.yaml" in YAML_FILES
    assert OVERLAYS, "no overlay under deploy/k8s/overlays/"
    assert MANIFESTS


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_yaml_file_parses(path: Path) -> None:
    assert documents(path), f"{rel(path)} holds no document"


@pytest.mark.parametrize("path", [*YAML_FILES, ROOT / ".yamllint.yaml"], ids=rel)
def test_every_yaml_file_passes_yamllint(path: Path) -> None:
    config = YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    problems = list(linter.run(path.read_text(), config, rel(path)))
    assert not problems, "\n".join(
        f"{rel(path)}:{p.line}:{p.column}: [{p.level}] {p.desc} ({p.rule})" for p in problems)


# --- Kubernetes manifests ------------------------------------------------------------------


def validate(doc: dict[str, Any], where: str) -> None:
    if doc.get("apiVersion") == "monitoring.coreos.com/v1":
        return  # the Prometheus Operator's kind: checked by tests/unit/test_monitoring.py
    problem = None
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(part) for part in error.absolute_path)
        problem = f"{doc['kind']} {doc['metadata'].get('name')}: {path}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError as error:
        problem = error.message
    if problem:  # outside the except: no page-long schema dump in the report
        pytest.fail(f"{where}: {problem}", pytrace=False)


@pytest.mark.parametrize("path", MANIFESTS, ids=rel)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in documents(path):
        validate(doc, rel(path))


# A tiny kustomize: exactly the fields the kustomizations use; any other one fails the test
# rather than being ignored.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images"}
CLUSTER_SCOPED = {"Namespace"}


def render(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    where = rel(folder / "kustomization.yaml")
    assert kustomization.get("apiVersion") == "kustomize.config.k8s.io/v1beta1", where
    assert kustomization.get("kind") == "Kustomization", where
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{where}: the test's renderer does not apply {sorted(unknown)}"

    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        assert path.exists(), f"{where} lists {entry}, which does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{where}: {entry} is no kustomization"
            resources += render(path)
        else:
            resources += copy.deepcopy(documents(path))

    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] == "Namespace":
                resource["metadata"]["name"] = namespace  # kustomize renames it too
            elif resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace

    for image in kustomization.get("images", []):
        for resource in resources:
            for container in containers(resource):
                name = image_name(container["image"])
                if name == image["name"]:
                    suffix = container["image"][len(name):]  # the tag or digest, if any
                    if "digest" in image:
                        suffix = "@" + image["digest"]
                    elif "newTag" in image:
                        suffix = ":" + str(image["newTag"])
                    container["image"] = image.get("newName", name) + suffix
    return resources


def image_name(image: str) -> str:
    image = image.split("@", 1)[0]
    head, _, tail = image.rpartition(":")
    return head if head and "/" not in tail else image


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    if resource["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return resource["spec"]["template"]["spec"]
    return None


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(resource)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec["containers"]]


def of_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_every_manifest_is_listed_by_a_kustomization() -> None:
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
            listed.add((kustomization.parent / entry).resolve())
    assert {path.resolve() for path in MANIFESTS} - listed == set(), "files no one deploys"


def test_the_base_holds_no_secret() -> None:
    resources = render(BASE)
    assert of_kind(resources, "Secret") == {}, "secrets belong in an overlay, not the base"
    referenced = {ref["secretRef"]["name"] for r in resources for c in containers(r)
                  for ref in c.get("envFrom", []) if "secretRef" in ref}
    assert referenced == {"mail-secrets"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=rel)
def test_an_overlay_renders_a_complete_and_consistent_set(overlay: Path) -> None:
    resources = render(overlay)
    for resource in resources:
        validate(resource, f"{rel(overlay)} (rendered)")

    keys = [(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
            for r in resources]
    assert len(keys) == len(set(keys)), "a resource is defined twice"
    namespaces = of_kind(resources, "Namespace")
    assert len(namespaces) == 1
    namespace = next(iter(namespaces))
    assert all(r["metadata"].get("namespace") == namespace
               for r in resources if r["kind"] not in CLUSTER_SCOPED)

    deployments = of_kind(resources, "Deployment")
    for name, deployment in deployments.items():
        assert selects(deployment["spec"]["selector"]["matchLabels"],
                       deployment["spec"]["template"]["metadata"]["labels"]), name
    pod_labels = {name: d["spec"]["template"]["metadata"]["labels"]
                  for name, d in deployments.items()}

    for name, service in of_kind(resources, "Service").items():
        targets = [d for d, labels in pod_labels.items()
                   if selects(service["spec"]["selector"], labels)]
        assert targets == [name], f"Service {name} selects the pods of {targets}"
        ports = [p for c in containers(deployments[name]) for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (
                f"Service {name}: targetPort {target} is no port of its pods")

    budgets = of_kind(resources, "PodDisruptionBudget")
    for name, budget in budgets.items():
        targets = [d for d, labels in pod_labels.items()
                   if selects(budget["spec"]["selector"]["matchLabels"], labels)]
        assert targets == [name], f"PodDisruptionBudget {name} selects {targets}"
        assert budget["spec"]["minAvailable"] == 1
    assert set(budgets) == set(deployments), "a PodDisruptionBudget for each Deployment"

    config_maps, secrets = of_kind(resources, "ConfigMap"), of_kind(resources, "Secret")
    for resource in resources:
        for container in containers(resource):
            where = f"{resource['metadata']['name']}/{container['name']}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for variable in container.get("env", []):
                source = variable.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    assert ref["key"] in config_maps[ref["name"]]["data"], where
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    assert ref["key"] in secret_data(secrets[ref["name"]]), where
            # The overlay says which image runs: a tag or a digest, never "latest".
            assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", container["image"]), where
            assert not container["image"].endswith(":latest"), where


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def config_map() -> dict[str, str]:
    return of_kind(render(BASE), "ConfigMap")["mail-settings"]["data"]


def shutdown_grace_s() -> float:
    default = SenderSettings.model_fields["shutdown_grace_s"].default
    return float(config_map().get("MAIL_SHUTDOWN_GRACE_S", default))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v.get("value", v.get("valueFrom")) for v in container.get("env", [])}


def probe_port(probe: dict[str, Any], container: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def pre_stop_seconds(container: dict[str, Any]) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    assert len(command) == 2 and command[0] == "sleep", f"preStop of unknown length: {pre_stop}"
    return int(command[1])


def assert_hardened(resource: dict[str, Any]) -> None:
    spec = pod_spec(resource)
    assert spec is not None
    name = resource["metadata"]["name"]
    pod = spec.get("securityContext", {})
    assert spec.get("automountServiceAccountToken") is False, name
    # Service links would put FOO_PORT=tcp://... variables in the environment.
    assert spec.get("enableServiceLinks") is False, name
    tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in containers(resource):
        where = f"{name}/{container['name']}"
        context = container.get("securityContext", {})
        assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
        assert context.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in context.get("capabilities", {}).get("drop", []), where
        seccomp = context.get("seccompProfile", pod.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", where
        assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes
                   for m in container.get("volumeMounts", [])), f"{where}: no emptyDir on /tmp"
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind}"


def test_each_service_is_a_deployment_as_the_readme_describes() -> None:
    resources = render(BASE)
    deployments = of_kind(resources, "Deployment")
    services = of_kind(resources, "Service")
    assert set(deployments) == set(SERVICES)
    grace = shutdown_grace_s()
    for name, (_cls, module, replicas, port) in SERVICES.items():
        deployment = deployments[name]
        spec, template = deployment["spec"], deployment["spec"]["template"]
        assert spec["replicas"] == replicas, name
        assert spec["strategy"]["type"] == "RollingUpdate", name
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}, name
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true", "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics"}, name
        assert_hardened(deployment)

        [container] = template["spec"]["containers"]
        assert container["command"][:3] == ["python", "-m", module], name
        assert env_of(container)["MAIL_HTTP_PORT"] == str(port), name
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        if "startupProbe" in container:  # never /readyz: a broker outage is no reason to kill
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in container:
                assert probe_port(container[probe], container) == port, f"{name} {probe}"
        # SIGKILL only after the preStop pause and the drain deadline.
        assert template["spec"]["terminationGracePeriodSeconds"] > (
            grace + pre_stop_seconds(container)), name
        if name in services:
            assert [p["port"] for p in services[name]["spec"]["ports"]] == [port], name

    assert {"config-svc", "dispatcher"} <= set(services)
    sender = deployments["sender"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(sender)["MAIL_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_migrations_job_migrates_every_service_in_order() -> None:
    jobs = of_kind(render(BASE), "Job")
    assert len(jobs) == 1
    job = next(iter(jobs.values()))
    assert_hardened(job)
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}
    commands = [" ".join([*c.get("command", []), *c.get("args", [])]) for c in containers(job)]
    assert service_commands(" ".join(commands)) == [(m, "migrate") for m in MIGRATION_ORDER]
    for container in containers(job):
        refs = [next(iter(source.values()))["name"] for source in container["envFrom"]]
        assert refs == ["mail-settings", "mail-secrets"]


def test_the_settings_of_the_manifests_are_settings_of_the_services() -> None:
    known = setting_names()
    settings = config_map()
    assert set(settings) <= known
    assert not set(settings) & SECRET_SETTINGS, "secrets belong in the Secret"
    for overlay in OVERLAYS:
        for secret in of_kind(render(overlay), "Secret").values():
            assert set(secret_data(secret)) == SECRET_SETTINGS | AMQP_URL_KEYS, rel(overlay)
    for resource in render(BASE):
        for container in containers(resource):
            names = set(env_of(container))
            assert names <= known, f"{resource['metadata']['name']}: {names - known}"
    # Every value of the ConfigMap, with each Deployment's own, is valid for its service.
    for name, deployment in of_kind(render(BASE), "Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        amqp = env_of(container)["MAIL_AMQP_URL"]
        assert amqp == {"secretKeyRef": {"name": "mail-secrets", "key": f"amqp-url-{name}"}}
        literal = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
        build_settings(SERVICES[name][0], {**settings, **literal})


# --- compose.yaml --------------------------------------------------------------------------

COMPOSE_SERVICES = {"config-svc", "dispatcher", "sender"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def command_line(command: str | list[str] | None) -> str:
    return command if isinstance(command, str) else " ".join(command or [])


def test_compose_runs_the_whole_stack() -> None:
    services = compose()["services"]
    assert {"rabbitmq", "postgres", "migrations", *COMPOSE_SERVICES, "mailcatcher"} <= set(
        services)
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3-management")
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "mailpit" in services["mailcatcher"]["image"]
    for name in ("migrations", *COMPOSE_SERVICES):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name
    assert service_commands(command_line(services["migrations"]["command"])) == [
        (module, "migrate") for module in MIGRATION_ORDER]
    for name in COMPOSE_SERVICES:
        module = SERVICES[name][1]
        assert service_commands(command_line(services[name]["command"]))[0][0] == module
        depends = services[name]["depends_on"]
        assert depends["migrations"]["condition"] == "service_completed_successfully", name
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        # Docker's SIGKILL must not come before the service has drained.
        stop = re.fullmatch(r"(\d+)s", services[name]["stop_grace_period"])
        default = SenderSettings.model_fields["shutdown_grace_s"].default
        grace = float(services[name]["environment"].get("MAIL_SHUTDOWN_GRACE_S", default))
        assert stop and int(stop.group(1)) > grace, name


def test_compose_sets_what_make_run_sets_and_only_settings_of_the_services() -> None:
    services = compose()["services"]
    known = setting_names()
    for name, service in services.items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping, please"
        mail = {key for key in environment if key.startswith("MAIL_")}
        assert mail <= known, f"{name}: {mail - known} are no settings"
    for name in COMPOSE_SERVICES:
        cls, _module, _replicas, port = SERVICES[name]
        environment = {k: str(v) for k, v in services[name]["environment"].items()}
        assert set(environment) >= SECRET_SETTINGS, name
        assert environment["MAIL_HTTP_PORT"] == str(port), name
        build_settings(cls, environment)
    environment = services["config-svc"]["environment"]
    for key in environment["MAIL_FERNET_KEYS"].split(","):
        Fernet(key.strip().encode())  # a valid key, not merely a placeholder
    assert len(environment["MAIL_JWT_SECRET"].encode()) >= 32  # what HS256 needs

    broker = urlsplit(environment["MAIL_AMQP_URL"])
    rabbitmq = services["rabbitmq"]["environment"]
    assert (broker.hostname, broker.username, broker.password, broker.path) == (
        "rabbitmq", rabbitmq["RABBITMQ_DEFAULT_USER"], rabbitmq["RABBITMQ_DEFAULT_PASS"],
        "/" + rabbitmq["RABBITMQ_DEFAULT_VHOST"])
    database = urlsplit(environment["MAIL_POSTGRES_DSN"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.username, database.password, database.path) == (
        "postgres", postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"],
        "/" + postgres["POSTGRES_DB"])
    for name in ("migrations", *COMPOSE_SERVICES):
        assert services[name]["environment"]["MAIL_POSTGRES_DSN"] == (
            environment["MAIL_POSTGRES_DSN"]), name


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The instructions (KEYWORD, arguments) of each stage, with ARG defaults in FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in ((parts[0].upper(), parts[1]) for parts in instructions):
        if keyword == "ARG" and not stages and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        if keyword == "FROM":
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def env_instructions(stage: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            found.update(pair.split("=", 1) for pair in shlex.split(rest))
    return found


def test_the_image_is_built_from_the_lock_file_and_runs_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        assert re.match(r"python:3\.11-slim", stage[0][1]), stage[0]
    runs = [rest for stage in stages for keyword, rest in stage if keyword == "RUN"]
    installs = [run for run in runs if re.search(r"\buv sync\b|\bpip install\b.*-r\b", run)]
    assert installs, "no dependency install"
    for run in installs:
        if "uv sync" in run:
            assert re.search(r"--locked|--frozen", run), run
            assert "--no-dev" in run, run
            assert not re.search(r"--all-groups|--group|--dev\b", run), run
        else:
            assert "--require-hashes" in run, run
    copied = " ".join(rest for stage in stages[:-1] for keyword, rest in stage
                      if keyword == "COPY")
    assert "uv.lock" in copied

    final = stages[-1]
    users = [rest.strip() for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage names a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert all(not re.search(r"\b(pip|uv)\b.*\b(install|sync)\b", rest)
               for keyword, rest in final if keyword == "RUN"), "installs in the runtime stage"
    environment = env_instructions(final)
    assert environment.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert environment.get("PYTHONUNBUFFERED") == "1"
    [cmd] = [rest for keyword, rest in final if keyword == "CMD"]
    assert json.loads(cmd)[:2] == ["python", "-m"], "CMD in exec form: SIGTERM reaches python"


def pattern_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def docker_ignores(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def test_the_build_context_holds_the_code_and_no_local_state() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for path in (".run/stack/secrets.env", ".run/stack/env", ".venv/bin/python", ".git/config",
                 "tests/unit/test_readme.py", "bench/bench_sender.py",
                 "services/sender/__pycache__/main.cpython-311.pyc"):
        assert docker_ignores(path, patterns), f"{path} would be sent to the build"
    sources = [word for stage in dockerfile_stages() for keyword, rest in stage
               if keyword == "COPY" and "--from" not in rest
               for word in rest.split()[:-1] if not word.startswith("--")]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [
            f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        for file in files:
            assert not docker_ignores(rel(file), patterns), f"{rel(file)} left out of the build"


# --- the commands the image runs -----------------------------------------------------------


def service_commands(text: str) -> list[tuple[str, str | None]]:
    """(module, subcommand or None) of every `python -m services.X [sub]` in a command."""
    return [(module, sub or None)
            for module, sub in re.findall(r"python -m (services\.\w+)(?: ([a-z][\w-]*))?", text)]


def every_command() -> list[str]:
    found = [rest for stage in dockerfile_stages() for keyword, rest in stage
             if keyword in {"CMD", "ENTRYPOINT"}]
    found = [" ".join(json.loads(c)) if c.startswith("[") else c for c in found]
    for path in MANIFESTS:
        for doc in documents(path):
            found += [" ".join([*c.get("command", []), *c.get("args", [])])
                      for c in containers(doc)]
    found += [command_line(service.get("command")) for service in compose()["services"].values()
              if "build" in service]  # the services of this image, not RabbitMQ's and others'
    return found


def dev_only_modules() -> set[str]:
    """Top-level modules installed only for the dev group: the image has none of them."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {package["name"]: package for package in lock["package"]}
    # The project itself: "virtual" while it was not installed, "editable" since it is
    # (its `mail-ops` console script).
    [root] = [package for package in packages.values()
              if {"virtual", "editable"} & set(package["source"])]
    runtime, todo = set(), [*root.get("dependencies", [])]
    while todo:
        dependency = todo.pop()
        package = packages[dependency["name"]]
        for extra in dependency.get("extra", []):
            todo += package.get("optional-dependencies", {}).get(extra, [])
        if dependency["name"] not in runtime:
            runtime.add(dependency["name"])
            todo += package.get("dependencies", [])
    dev_only = set(packages) - runtime - {root["name"]}

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    dev_only = {normal(name) for name in dev_only}
    return {module for module, dists in packages_distributions().items()
            if dists and all(normal(dist) in dev_only for dist in dists)}


# Runs `python -m MODULE ARGS...` with the dev dependencies out of reach, as in the image.
WITHOUT_DEV = """
import os, runpy, sys
blocked = set(os.environ["BLOCKED_MODULES"].split(","))
class LeaveOut:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (a dev dependency)")
sys.meta_path.insert(0, LeaveOut())
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def test_every_command_of_the_image_names_a_service() -> None:
    modules = {module for command in every_command() for module, _ in service_commands(command)}
    assert modules == {module for _cls, module, _r, _p in SERVICES.values()}
    for command in every_command():
        assert service_commands(command), f"not a service command: {command!r}"


@pytest.mark.parametrize("module", sorted(MIGRATION_ORDER))
def test_the_commands_work_without_the_dev_dependencies(module: str) -> None:
    blocked = dev_only_modules()
    assert "pytest" in blocked
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_DEV, module, "--help"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
        env={**os.environ, "BLOCKED_MODULES": ",".join(sorted(blocked)),
             "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    used = {sub for command in every_command()
            for found, sub in service_commands(command) if found == module and sub}
    for sub in used:
        assert re.search(rf"\b{sub}\b", result.stdout), f"{module} has no command {sub}"
