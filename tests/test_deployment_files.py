"""The deployment files agree with each other, with the code and with Dagster's own config schemas.

Nothing is started: YAML is parsed with pyyaml, Dockerfiles line by line, and the Dagster instance,
the dagster-k8s tags and the k8s executor config go through the parsers Dagster itself uses. Each
check names the files it compares, so a value changed in one place fails here, not at deploy time.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from qad_assets.cli import build_parser

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: Dummy values for the instance's env vars: Dagster resolves `env:` sources while validating.
INSTANCE_ENV = {
    "DAGSTER_PG_HOST": "postgres",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-secret",
    "DAGSTER_PG_DB": "dagster",
    "QAD_IMAGE": "registry.example.org/desi-qad:0.1.0",
}


# ---------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def pyproject_pins() -> dict[str, str]:
    """``name==version`` dependencies of pyproject.toml (extras dropped)."""
    pins = {}
    for dep in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;,]+)", dep)
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` and ``$$``, over a whole document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in (":-", "-"):
            return current if (current if op == ":-" else current is not None) else arg
        assert current, f"docker/docker-compose.yml needs {name}, which docker/.env.example does not set"
        return current

    return _INTERPOLATION.sub(substitute, value)


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def dockerfile_expose(path: Path) -> set[str]:
    return {port for instr, rest in dockerfile(path) if instr == "EXPOSE" for port in rest.split()}


def dockerfile_cmd(path: Path) -> list[str]:
    cmds = [json.loads(rest) for instr, rest in dockerfile(path) if instr == "CMD"]
    assert len(cmds) == 1, f"{path.name}: want exactly one exec-form CMD"
    return cmds[0]


def flag(command: list[str], name: str) -> str:
    """The value of ``--name=value`` / ``--name value`` / ``-n value`` in an argv list."""
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return command[i + 1]
    raise AssertionError(f"{name} not in {command}")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every mapping entry and list item of a YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield path, index, value
            yield from walk(value, f"{path}[{index}]")


# ---------------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml with its ${...} filled from .env.example, as `docker compose config` would."""
    return interpolate(load_yaml(DOCKER / "docker-compose.yml"), env_example())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def instance() -> dict[str, Any]:
    return load_yaml(DOCKER / "dagster.yaml")


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load_yaml(K8S / "dagster-values.yaml")


@pytest.fixture(scope="module")
def deployment(values) -> dict[str, Any]:
    (only,) = values["dagster-user-deployments"]["deployments"]
    return only


@pytest.fixture(scope="module")
def k8s_launcher(values) -> dict[str, Any]:
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    return values["runLauncher"]["config"]["k8sRunLauncher"]


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    return load_yaml(K8S / "raycluster.yaml")


@pytest.fixture(scope="module")
def pvc() -> dict[str, Any]:
    return load_yaml(K8S / "storage-pvc.yaml")


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def helm_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: str(item["value"]) for item in deployment["env"]}


def launcher_env(k8s_launcher: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in k8s_launcher["envVars"])


def ray_containers(raycluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Ray container of the head and of each worker group, by group name."""
    spec = raycluster["spec"]
    groups = {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}
    return {name: group["template"]["spec"]["containers"][0] for name, group in groups.items()}


def ray_pod_specs(raycluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = raycluster["spec"]
    groups = {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}
    return {name: group["template"]["spec"] for name, group in groups.items()}


def code_env_names() -> tuple[set[str], set[str]]:
    """(required, optional) env vars of the code location: the ``dg.EnvVar``s of resources_from_env must be
    set at run time, ``qad_assets.config.OPTIONAL`` may be absent. Read from the code, so a new variable
    in qad_assets/config.py is checked here without editing this test.
    """
    import dagster as dg

    from qad_assets import config
    from resources import resources_from_env

    required = {
        value.env_var_name
        for resource in resources_from_env().values()
        for value in (getattr(resource, field) for field in type(resource).model_fields)
        if isinstance(value, dg.EnvVar)
    }
    return required, set(config.OPTIONAL) - required


# ---------------------------------------------------------------------------------------------------
# The Dagster instance, through Dagster's own loader
# ---------------------------------------------------------------------------------------------------


def validated_instance(filename: str, base_dir: Path):
    """Load docker/<filename> as DagsterInstance does (instance schema, concurrency rules), then check
    each configured class's config against that class's own schema. Stops short of instantiating the
    classes: that would connect to Postgres and to a Kubernetes API.
    """
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.ref import InstanceRef

    ref = InstanceRef.from_dir(str(base_dir), config_dir=str(DOCKER), config_filename=filename)
    classes = {}
    for field, data in ref._asdict().items():
        if not field.endswith("_data") or data is None:
            continue
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
        assert result.success, f"{filename} {field} ({data.class_name}): {[e.message for e in result.errors]}"
        classes[field] = (klass, result.value)
    return ref, classes


def test_production_instance_loads_with_dagster(monkeypatch, tmp_path):
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    ref, classes = validated_instance("dagster.yaml", tmp_path)

    storage, pg = classes["storage_data"]
    assert storage.__name__ == "DagsterPostgresStorage"
    assert pg["postgres_db"] == {
        "hostname": "postgres",
        "username": "dagster",
        "password": "not-a-secret",
        "db_name": "dagster",
        "port": 5432,
        "params": {},
        "scheme": "postgresql+psycopg2",  # the driver dagster-postgres installs (SQLAlchemy 2.1 defaults to v3)
    }, "every Postgres setting must come from the DAGSTER_PG_* env vars"
    assert classes["run_coordinator_data"][0].__name__ == "QueuedRunCoordinator"
    launcher, launcher_config = classes["run_launcher_data"]
    assert launcher.__name__ == "K8sRunLauncher"
    assert launcher_config["job_image"] == INSTANCE_ENV["QAD_IMAGE"]
    assert ref.settings["concurrency"]["pools"]["default_limit"] == 1
    assert ref.settings["telemetry"] == {"enabled": False}
    assert ref.settings["run_monitoring"]["enabled"] and ref.settings["run_retries"]["enabled"]


def test_compose_instance_loads_with_dagster(monkeypatch, tmp_path):
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    _, classes = validated_instance("dagster-compose.yaml", tmp_path)
    assert classes["run_launcher_data"][0].__name__ == "DefaultRunLauncher"
    assert classes["compute_logs_data"][1]["base_dir"].startswith("/data/")


def test_run_limit_belongs_under_concurrency(instance, monkeypatch, tmp_path):
    """Why docker/dagster.yaml sets max_concurrent_runs under `concurrency`: Dagster refuses it on the
    QueuedRunCoordinator once `concurrency.pools` exists."""
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    moved = {**instance, "run_coordinator": {**instance["run_coordinator"], "config": {"max_concurrent_runs": 4}}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(moved))
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        dagster_instance_config(str(tmp_path))


def test_compose_instance_differs_only_in_launcher_and_logs(instance):
    compose_instance = load_yaml(DOCKER / "dagster-compose.yaml")
    differs = {"run_launcher", "compute_logs"}
    assert {k: v for k, v in compose_instance.items() if k not in differs} == {
        k: v for k, v in instance.items() if k not in differs
    }


def test_helm_values_render_the_production_instance(values, instance, k8s_launcher):
    """The chart writes its own dagster.yaml from the values; it must say what docker/dagster.yaml says."""
    daemon = values["dagsterDaemon"]
    launcher = instance["run_launcher"]["config"]
    assert daemon["runCoordinator"]["type"] == instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert not daemon["runCoordinator"]["config"]["queuedRunCoordinator"], "limits go under `concurrency`"
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert values["concurrency"]["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"] == 1

    monitoring, instance_monitoring = daemon["runMonitoring"], instance["run_monitoring"]
    assert monitoring["enabled"] is instance_monitoring["enabled"] is True
    assert monitoring["startTimeoutSeconds"] == instance_monitoring["start_timeout_seconds"]
    assert monitoring["cancelTimeoutSeconds"] == instance_monitoring["cancel_timeout_seconds"]
    assert monitoring["maxResumeRunAttempts"] == instance_monitoring["max_resume_run_attempts"]
    retries, instance_retries = daemon["runRetries"], instance["run_retries"]
    assert retries["enabled"] is instance_retries["enabled"] is True
    assert retries["maxRetries"] == instance_retries["max_retries"]
    assert retries["retryOnAssetOrOpFailure"] == instance_retries["retry_on_asset_or_op_failure"]

    assert values["telemetry"]["enabled"] is instance["telemetry"]["enabled"] is False
    assert values["pythonLogs"]["managedPythonLoggers"] == instance["python_logs"]["managed_python_loggers"]
    assert values["pythonLogs"]["pythonLogLevel"] == instance["python_logs"]["python_log_level"]

    assert values["global"]["serviceAccountName"] == values["serviceAccount"]["name"]
    assert values["global"]["serviceAccountName"] == launcher["service_account_name"]
    assert values["global"]["dagsterHome"] == launcher["dagster_home"]
    assert k8s_launcher["failPodOnRunFailure"] is launcher["fail_pod_on_run_failure"] is True
    assert k8s_launcher["imagePullPolicy"] == launcher["image_pull_policy"]


# ---------------------------------------------------------------------------------------------------
# Images and versions
# ---------------------------------------------------------------------------------------------------


def test_one_code_location_image_everywhere(services, deployment, raycluster):
    helm_image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert deployment["image"]["tag"] == PYPROJECT["project"]["version"], "image tag is the package version"
    assert services["code-location"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / "Dockerfile").is_file()
    for name in ("code-location", "ray-head", "mlflow"):
        assert services[name]["image"] == helm_image, f"compose {name}"
    for group, container in ray_containers(raycluster).items():
        assert container["image"] == helm_image, f"RayCluster {group}"
    assert env_example()["QAD_IMAGE"] == helm_image


def test_dagster_image_pins_match_pyproject(services):
    pins = pyproject_pins()
    wanted = {name: pins[name] for name in ("dagster", "dagster-webserver", "dagster-postgres", "dagster-k8s")}
    runs = " ".join(rest for instr, rest in dockerfile(DOCKER / "Dockerfile.dagster") if instr == "RUN")
    installed = {m[1].lower(): m[2] for m in re.finditer(r"([A-Za-z0-9_.-]+)==([0-9][\w.]*)", runs)}
    assert installed == wanted
    for name in ("dagster-webserver", "dagster-daemon"):
        assert services[name]["image"].rsplit(":", 1)[1] == pins["dagster"], f"compose {name} image tag"


def test_ray_version_matches_pyproject(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    assert raycluster["spec"]["rayVersion"] == pyproject_pins()["ray"]


# ---------------------------------------------------------------------------------------------------
# Ports and names
# ---------------------------------------------------------------------------------------------------


def test_code_location_port_and_module(services, deployment):
    port, module = "4000", PYPROJECT["tool"]["dagster"]["module_name"]
    cmd = dockerfile_cmd(DOCKER / "Dockerfile")
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert dockerfile_expose(DOCKER / "Dockerfile") == {port}
    assert flag(cmd, "-p") == port and flag(cmd, "-m") == module
    code = services["code-location"]
    assert code["expose"] == [port]
    assert flag(code["healthcheck"]["test"], "-p") == port
    (grpc,) = load_yaml(DOCKER / "workspace.yaml")["load_from"]
    assert str(grpc["grpc_server"]["port"]) == port
    assert grpc["grpc_server"]["location_name"] == PYPROJECT["tool"]["dagster"]["code_location_name"]
    assert str(deployment["port"]) == port
    assert flag(deployment["codeServerArgs"], "-m") == module


def test_webserver_port(services, values):
    port = "3000"
    assert dockerfile_expose(DOCKER / "Dockerfile.dagster") == {port}
    assert flag(dockerfile_cmd(DOCKER / "Dockerfile.dagster"), "-p") == port
    web = services["dagster-webserver"]
    assert flag(web["command"], "-p") == port
    assert web["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert str(values["dagsterWebserver"]["service"]["port"]) == port
    assert str(values["dagsterWebserver"]["readinessProbe"]["httpGet"]["port"]) == port


def test_mlflow_port_and_address(services, deployment):
    port = "5000"
    mlflow = services["mlflow"]
    assert flag(mlflow["command"], "--port") == port
    for where, uri in [
        ("compose code-location", service_env(services["code-location"])["MLFLOW_TRACKING_URI"]),
        ("helm", helm_env(deployment)["MLFLOW_TRACKING_URI"]),
    ]:
        url = urlsplit(uri)
        assert (url.scheme, url.hostname, str(url.port)) == ("http", "mlflow", port), where
        host = f"{url.hostname}:{url.port}"
        assert host in flag(mlflow["command"], "--allowed-hosts").split(","), f"{where}: MLflow refuses Host {host}"


def test_scoring_service_command_port_and_registry(services):
    scoring = services["scoring"]
    command = scoring["command"]
    assert command[:2] == ["qad", "serve"]
    build_parser().parse_args(command[1:])  # every option is one qad serve has
    port = flag(command, "--port")
    assert flag(command, "--host") == "0.0.0.0", "inside the container; published on the host's loopback"
    assert scoring["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"127.0.0.1:{port}/health" in " ".join(scoring["healthcheck"]["test"])
    env, code_env = service_env(scoring), service_env(services["code-location"])
    assert env["MLFLOW_TRACKING_URI"] == code_env["MLFLOW_TRACKING_URI"], "the registry the pipeline promotes in"
    assert env["QAD_STORAGE"] == code_env["QAD_STORAGE"] and "storage:/data" in scoring["volumes"]
    assert env["RAY_ADDRESS"] == "", "Serve's proxy must run in this container, which publishes the port"
    assert "mlflow" in scoring["depends_on"]
    archive_mounts = {v.split(":")[1] for v in scoring["volumes"]}
    assert not env["QAD_QSO_CATALOG"] or env["QAD_QSO_CATALOG"].startswith(tuple(archive_mounts))
    assert env["QAD_ARCHIVE"] in archive_mounts, "a QSO catalogue in the DESI tree must be readable here"


def test_ray_ports_and_addresses(services, deployment, raycluster):
    gcs, client, dashboard = "6379", "10001", "8265"
    head = services["ray-head"]
    assert head["command"][:3] == ["ray", "start", "--head"]
    assert flag(head["command"], "--port") == gcs
    assert flag(head["command"], "--ray-client-server-port") == client
    assert flag(head["command"], "--dashboard-port") == dashboard
    assert head["ports"] == [f"127.0.0.1:{dashboard}:{dashboard}"]
    assert set(head["expose"]) == {gcs, client}

    compose_address = urlsplit(service_env(services["code-location"])["RAY_ADDRESS"])
    assert (compose_address.scheme, compose_address.hostname, str(compose_address.port)) == ("ray", "ray-head", client)

    ports = {p["name"]: str(p["containerPort"]) for p in ray_containers(raycluster)["head"]["ports"]}
    assert ports == {"gcs-server": gcs, "dashboard": dashboard, "client": client}
    helm_address = urlsplit(helm_env(deployment)["RAY_ADDRESS"])
    head_service = f"{raycluster['metadata']['name']}-head-svc"  # KubeRay's name for the head Service
    assert (helm_address.scheme, helm_address.hostname, str(helm_address.port)) == ("ray", head_service, client)


def test_referenced_services_exist(services):
    (grpc,) = load_yaml(DOCKER / "workspace.yaml")["load_from"]
    assert grpc["grpc_server"]["host"] in services
    for name in ("dagster-webserver", "dagster-daemon", "code-location"):
        assert service_env(services[name])["DAGSTER_PG_HOST"] in services, name
    code_env = service_env(services["code-location"])
    assert urlsplit(code_env["RAY_ADDRESS"]).hostname in services
    assert urlsplit(code_env["MLFLOW_TRACKING_URI"]).hostname in services
    assert urlsplit(service_env(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]).hostname in services
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown {target}"


# ---------------------------------------------------------------------------------------------------
# Environment variables
# ---------------------------------------------------------------------------------------------------


def test_required_env_vars_set_for_the_code(services, deployment, k8s_launcher, instance):
    required, optional = code_env_names()
    assert {"QAD_STORAGE", "QAD_ARCHIVE"} <= required
    settings = {
        "compose code-location": service_env(services["code-location"]),
        "helm user deployment": helm_env(deployment),
        "helm run launcher": launcher_env(k8s_launcher),
    }
    for where, env in settings.items():
        for name in sorted(required):
            assert env.get(name), f"{where} does not set {name}, which resources_from_env requires"
        unknown = {n for n in env if n.startswith("QAD_")} - required - optional
        assert not unknown, f"{where} sets {unknown}, which resources_from_env does not read"
    assert helm_env(deployment) == launcher_env(k8s_launcher), "run pods must see the code location's env"
    passed_to_runs = set(instance["run_launcher"]["config"]["env_vars"])
    assert required <= passed_to_runs, "docker/dagster.yaml must pass the required vars to run pods"
    assert set(helm_env(deployment)) <= passed_to_runs
    assert passed_to_runs - {n for n in passed_to_runs if n.startswith("DAGSTER_PG_")} <= required | optional


def test_instance_env_vars_are_provided(services, instance):
    """Every `env:` of the instances exists where they are read: compose services that mount the compose
    instance set each one; the production instance's exist in compose or .env.example."""
    env_names = {value["env"] for _, key, value in walk(instance) if isinstance(value, dict) and "env" in value}
    env_names |= set(instance["run_launcher"]["config"]["env_vars"])
    known = set(env_example()) | set(service_env(services["code-location"]))
    assert env_names <= known, f"not in compose or .env.example: {env_names - known}"

    compose_instance = load_yaml(DOCKER / "dagster-compose.yaml")
    compose_names = {v["env"] for _, _, v in walk(compose_instance) if isinstance(v, dict) and "env" in v}
    readers = [n for n, s in services.items() if any("dagster-compose.yaml" in str(v) for v in s.get("volumes", []))]
    assert set(readers) == {"dagster-webserver", "dagster-daemon", "code-location"}
    for name in readers:
        missing = compose_names - set(service_env(services[name]))
        assert not missing, f"compose {name} mounts the instance but lacks {missing}"


# ---------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------


def test_compose_shared_storage_same_path(services):
    for name in ("code-location", "dagster-daemon", "dagster-webserver", "ray-head", "mlflow"):
        assert "storage:/data" in services[name]["volumes"], name
    code_env = service_env(services["code-location"])
    assert code_env["QAD_STORAGE"].startswith("/data/")
    archive_mounts = {v.split(":")[1] for n in ("code-location", "ray-head") for v in services[n]["volumes"]}
    assert code_env["QAD_ARCHIVE"] in archive_mounts, "Ray tasks read the archive at the driver's path"
    assert flag(services["mlflow"]["command"], "--artifacts-destination").startswith("/data/")


def test_k8s_shared_storage_same_claim_and_path(pvc, deployment, k8s_launcher, instance, raycluster):
    claim, mount = pvc["metadata"]["name"], "/data"
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "pods on several nodes share it"
    launcher = instance["run_launcher"]["config"]
    pods = {
        "helm user deployment": (deployment["volumes"], deployment["volumeMounts"]),
        "helm run launcher": (k8s_launcher["volumes"], k8s_launcher["volumeMounts"]),
        "docker/dagster.yaml": (launcher["volumes"], launcher["volume_mounts"]),
    }
    for group, spec in ray_pod_specs(raycluster).items():
        pods[f"RayCluster {group}"] = (spec["volumes"], spec["containers"][0]["volumeMounts"])
    for where, (volumes, mounts) in pods.items():
        by_name = {v["name"]: v for v in volumes}
        ours = [m for m in mounts if by_name[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim]
        assert [m["mountPath"] for m in ours] == [mount], where
    for name in ("QAD_STORAGE", "QAD_ARCHIVE"):
        assert helm_env(deployment)[name].startswith(f"{mount}/"), name


# ---------------------------------------------------------------------------------------------------
# Exposure and secrets
# ---------------------------------------------------------------------------------------------------


def test_published_ports_bind_loopback(services, values, raycluster):
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"compose {name} publishes {port} beyond loopback"
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    assert raycluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


SECRET_KEY = re.compile(r"pass(word|wd)?$|token$|_key$", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")
YAML_FILES = [
    DOCKER / "dagster.yaml",
    DOCKER / "dagster-compose.yaml",
    DOCKER / "docker-compose.yml",
    DOCKER / "workspace.yaml",
    *sorted(K8S.glob("*.yaml")),
]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_no_literal_secrets_in_yaml(path):
    """Secrets are `env:` sources, compose `${...}` from docker/.env, or Kubernetes Secrets by name."""
    for where, key, value in walk(load_yaml(path)):
        if isinstance(value, str):
            if isinstance(key, str) and SECRET_KEY.search(key):
                assert value == "" or value.startswith("${"), f"{path.name}{where}.{key} is a literal secret"
            for match in URL_CREDENTIALS.finditer(value):
                assert match["password"].startswith("${"), f"{path.name}{where}: password inside a URL"


def test_env_example_holds_placeholders_only():
    for key, value in env_example().items():
        if SECRET_KEY.search(key):
            assert "change-me" in value, f".env.example {key} must be an obvious placeholder"
    for path in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.dagster"):
        for instr, rest in dockerfile(path):
            assert not (instr in {"ENV", "ARG"} and re.search(r"PASS|TOKEN|SECRET", rest, re.I)), path.name


def test_mlflow_and_postgres_are_on_the_internal_network_only(compose, services):
    """MLflow has no authentication (whoever reaches it can move champion): published nowhere."""
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("mlflow", "postgres"):
        assert "ports" not in services[name], f"{name} must not be published"
        assert services[name]["networks"] == ["backend"], name
    for name in ("code-location", "dagster-webserver", "dagster-daemon", "scoring", "ray-head"):
        assert "backend" in services[name]["networks"], f"{name} must reach postgres or mlflow"


def preflight_result(services, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The compose preflight's own shell command, run here with ``env`` as docker/.env."""
    preflight = services["preflight"]
    assert preflight["entrypoint"] == ["sh", "-c"]
    (script,) = preflight["command"]
    names = {"DAGSTER_PG_PASSWORD", "QAD_RAY_AUTH_TOKEN"}
    assert set(preflight["environment"]) == names
    return subprocess.run(["sh", "-c", script], env={name: env[name] for name in names}, capture_output=True, text=True)


def test_the_env_example_placeholders_are_refused(services):
    refused = preflight_result(services, env_example())
    assert refused.returncode == 1 and "still holds a change-me placeholder" in refused.stderr
    real = {"DAGSTER_PG_PASSWORD": "x7Kq2mVw9Lp4", "QAD_RAY_AUTH_TOKEN": "4f9c1e2ab7d03e55"}
    assert preflight_result(services, real).returncode == 0
    for name in ("postgres", "ray-head"):  # everything else waits for one of these
        assert services[name]["depends_on"]["preflight"] == {"condition": "service_completed_successfully"}


def test_ray_requires_its_token_everywhere(services, raycluster, values, deployment, k8s_launcher, instance):
    token = "${QAD_RAY_AUTH_TOKEN:?set QAD_RAY_AUTH_TOKEN in docker/.env}"
    raw = load_yaml(DOCKER / "docker-compose.yml")["services"]
    for name in ("ray-head", "code-location", "scoring"):
        assert service_env(services[name])["RAY_AUTH_MODE"] == "token", name
        assert raw[name]["environment"]["RAY_AUTH_TOKEN"] == token, name
    secret = {"secretRef": {"name": "qad-ray-auth"}}
    for group, container in ray_containers(raycluster).items():
        assert secret in container["envFrom"], f"Ray {group} pods start without the token"
    assert secret in raycluster["spec"]["autoscalerOptions"]["envFrom"]
    assert {"name": "qad-ray-auth"} in deployment["envSecrets"]
    assert {"name": "qad-ray-auth"} in k8s_launcher["envSecrets"]
    assert "qad-ray-auth" in instance["run_launcher"]["config"]["env_secrets"]


def test_only_this_namespace_reaches_the_ray_cluster(raycluster):
    policy = load_yaml(K8S / "ray-networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"ray.io/cluster": raycluster["metadata"]["name"]}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule == {"from": [{"podSelector": {}}]}, "no other namespace, no address block, every port closed else"


# ---------------------------------------------------------------------------------------------------
# GPU placement and per-step pod sizes (resources/k8s.py), through dagster-k8s's parser
# ---------------------------------------------------------------------------------------------------


def test_gpu_worker_group_requests_a_gpu(raycluster):
    from resources.k8s import GPU_NODE_SELECTOR, GPU_TOLERATIONS

    containers, pods = ray_containers(raycluster), ray_pod_specs(raycluster)
    assert set(containers) == {"head", "cpu-workers", "gpu-workers"}
    gpu = containers["gpu-workers"]["resources"]
    assert str(gpu["limits"]["nvidia.com/gpu"]) == str(gpu["requests"]["nvidia.com/gpu"]) == "1"
    assert pods["gpu-workers"]["nodeSelector"] == GPU_NODE_SELECTOR
    assert pods["gpu-workers"]["tolerations"] == GPU_TOLERATIONS
    for group in ("head", "cpu-workers"):
        assert "nvidia.com/gpu" not in str(containers[group]["resources"]), group


def step_job(op_tags: dict[str, Any]):
    """The Kubernetes Job dagster-k8s would create for a step of an asset with these op_tags."""
    import dagster as dg
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    @dg.asset(op_tags=op_tags)
    def probe() -> None: ...

    user_config = get_user_defined_k8s_config(probe.op.tags)  # the tags as Dagster stores them (JSON strings)
    job_config = DagsterK8sJobConfig(job_image=INSTANCE_ENV["QAD_IMAGE"], dagster_home="/opt/dagster/dagster_home")
    return construct_dagster_k8s_job(
        job_config, ["dagster", "api", "execute_step"], "qad-step-test", user_config, component="step_worker"
    )


def test_cpu_step_tags_parse():
    from resources.k8s import CPU_RESOURCES, K8S_CPU_TAGS

    pod = step_job(K8S_CPU_TAGS).spec.template.spec
    assert pod.containers[0].resources.requests == CPU_RESOURCES["requests"]
    assert pod.containers[0].resources.limits == CPU_RESOURCES["limits"]
    assert not pod.node_selector and not pod.tolerations


def test_gpu_step_tags_parse_and_match_the_gpu_workers(raycluster):
    from resources.k8s import GPU_RESOURCES, K8S_GPU_TAGS

    pod = step_job(K8S_GPU_TAGS).spec.template.spec
    resources = pod.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == resources.requests["nvidia.com/gpu"] == "1"
    assert resources.limits == GPU_RESOURCES["limits"]
    gpu_pod = ray_pod_specs(raycluster)["gpu-workers"]
    assert pod.node_selector == gpu_pod["nodeSelector"]
    assert [t.to_dict() for t in pod.tolerations] == [
        {"key": t["key"], "operator": t["operator"], "effect": t["effect"], "toleration_seconds": None, "value": None}
        for t in gpu_pod["tolerations"]
    ]


def test_k8s_executor_config_validates():
    from dagster._config import validate_config
    from dagster_k8s import k8s_job_executor

    from resources.k8s import K8S_EXECUTOR_CONFIG

    schema = k8s_job_executor.config_schema.config_type
    result = validate_config(schema, K8S_EXECUTOR_CONFIG)
    assert result.success, [e.message for e in result.errors]
    assert not validate_config(schema, {**K8S_EXECUTOR_CONFIG, "max_concurrent": "four"}).success
