"""The deployment files: systemd unit, example config, Kubernetes manifests, Containerfile.

They are not run here (no systemd as PID 1, no cluster, no container engine), so these tests
check what can go wrong without one: the unit passes ``systemd-analyze verify`` (or, without
it, has the keys that matter), the example and ConfigMap configs load with the agent's own
``load_config``, and the DaemonSet has what per-node sampling needs.
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from wattspan.agent.config import DEFAULT_METRICS_PORT, DEFAULT_OTLP_PORT, load_config
from wattspan.agent.exporters.prometheus import HEALTH_PATH

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency (pip install pyyaml)")

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "wattspan-agent.service"
EXAMPLE = SYSTEMD / "wattspan.toml"
K8S = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
SECRET_NAME = "wattspan-agent-auth"
SECRET_KEYS = ("otlp-token", "metrics-token")


# --- systemd ---------------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    """The unit as INI; repeated keys (``SystemCallFilter=``) are joined with newlines."""

    class _Multi(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: str, value: Any) -> None:
            if key in self and isinstance(value, list) and isinstance(self[key], list):
                self[key].extend(value)
            else:
                super().__setitem__(key, value)

    cp = configparser.RawConfigParser(
        dict_type=_Multi, strict=False, empty_lines_in_values=False, interpolation=None
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read(UNIT, encoding="utf-8")
    return cp


def test_unit_service_essentials() -> None:
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    exec_start = svc["ExecStart"].split()
    assert Path(exec_start[0]).name == "wattspan"
    assert Path(exec_start[0]).is_absolute()
    assert exec_start[1:3] == ["agent", "--config"]
    assert exec_start[3] == "/etc/wattspan/wattspan.toml"
    # The agent pings the watchdog at WatchdogSec/2 (at most every 5 s): any value >= 10 s
    # leaves it slack.
    assert svc["WatchdogSec"].endswith("s") and int(svc["WatchdogSec"][:-1]) >= 10
    assert svc["Restart"] == "on-failure"
    assert "2" in svc["RestartPreventExitStatus"].split()  # config errors exit 2
    assert svc["StateDirectory"] == "wattspan"
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", "CAP_SYS_PTRACE"),
        ("ReadWritePaths", "/var/lib/wattspan"),
    ],
)
def test_unit_hardening(key: str, value: str) -> None:
    assert _unit()["Service"].get(key) == value


def test_unit_syscall_filter_and_families() -> None:
    svc = _unit()["Service"]
    filters = svc["SystemCallFilter"].split()
    assert "@system-service" in filters
    assert "~@privileged" in filters and "@debug" in filters  # ptrace(2) stays forbidden
    families = set(svc["RestrictAddressFamilies"].split())
    # AF_UNIX carries sd_notify; the endpoints need INET/INET6; nothing else.
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # NVML opens /dev/nvidia*: a private /dev would silently disable GPU monitoring.
    assert "PrivateDevices" not in svc
    assert "ProtectProc" not in svc  # the process collector reads every /proc/PID


def test_unit_state_paths_match_example_config() -> None:
    config = load_config(EXAMPLE, environ={})
    svc = _unit()["Service"]
    state = Path("/var/lib") / svc["StateDirectory"]
    assert config.state_dir == state
    assert Path(config["store"]["path"]).parent == state
    assert svc["ReadWritePaths"] == str(state)


def _systemd_verify(unit_text: str, tmp_path: Path) -> tuple[int, list[str]]:
    """``systemd-analyze verify`` on a copy of the unit whose ExecStart binary exists
    (verify insists on it): this interpreter's ``wattspan`` script, or the interpreter."""
    wattspan = Path(sys.executable).with_name("wattspan")
    exe = wattspan if wattspan.exists() else Path(sys.executable)
    unit = tmp_path / UNIT.name
    unit.write_text(unit_text.replace("/usr/local/bin/wattspan", str(exe)), encoding="utf-8")
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are only warnings (exit 0): collect every line about our unit.
    return out.returncode, [
        line for line in (out.stdout + out.stderr).splitlines() if UNIT.name in line
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    rc, complaints = _systemd_verify(UNIT.read_text(encoding="utf-8"), tmp_path)
    assert rc == 0
    assert complaints == []
    # ...and the check would notice a misspelt key.
    typo = UNIT.read_text(encoding="utf-8").replace("NoNewPrivileges=", "NoNewPrivilege=")
    _, complaints = _systemd_verify(typo, tmp_path)
    assert any("NoNewPrivilege" in line for line in complaints)


# --- example config --------------------------------------------------------------------------


def test_example_config_loads_and_matches_defaults() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.source == str(EXAMPLE)
    defaults = load_config(None, environ={})
    changed = {"agent.state_dir", "store.path"}
    for section, values in defaults.sections.items():
        for key, value in values.items():
            if f"{section}.{key}" in changed:
                continue
            assert config[section][key] == value, f"{section}.{key} differs from the default"
    assert config["metrics"]["port"] == DEFAULT_METRICS_PORT
    assert config["otlp"]["port"] == DEFAULT_OTLP_PORT


def test_example_config_commented_exporter_is_valid(tmp_path: Path) -> None:
    """Uncommenting the example InfluxDB table gives a config that still loads."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# [exporters.influxdb]")
    block = [
        line[2:] for line in lines[start:] if line.startswith("# ") and not line.startswith("# #")
    ]
    path = tmp_path / "uncommented.toml"
    path.write_text("\n".join(lines) + "\n" + "\n".join(block) + "\n", encoding="utf-8")
    config = load_config(path, environ={})
    assert config.exporters["influxdb"]["api"] == "v2"


# --- Kubernetes -------------------------------------------------------------------------------


def _docs(name: str) -> list[dict[str, Any]]:
    with open(K8S / name, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _one(name: str, kind: str) -> dict[str, Any]:
    docs = [d for d in _docs(name) if d["kind"] == kind]
    assert len(docs) == 1, f"{name}: expected one {kind}"
    return docs[0]


@pytest.fixture(scope="module")
def daemonset() -> dict[str, Any]:
    return _one("daemonset.yaml", "DaemonSet")


@pytest.fixture(scope="module")
def pod(daemonset: dict[str, Any]) -> dict[str, Any]:
    return daemonset["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kust["kind"] == "Kustomization"
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for name in listed:
        for doc in _docs(name):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_builds() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    # Two ConfigMaps: the agent's config and the Grafana dashboards (deploy/grafana).
    assert kinds == ["ConfigMap", "ConfigMap", "DaemonSet", "Namespace", "Service",
                     "ServiceAccount"]  # fmt: skip
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "wattspan"


def test_daemonset_selector_matches_template(daemonset: dict[str, Any]) -> None:
    assert daemonset["apiVersion"] == "apps/v1"
    selector = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector and selector.items() <= labels.items()


def test_daemonset_host_pid_and_sys(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert pod["hostPID"] is True  # per-process stats of the node's processes
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    sys_mount = mounts["/host/sys"]
    assert sys_mount["readOnly"] is True
    assert volumes[sys_mount["name"]]["hostPath"]["path"] == "/sys"
    env = _env(container)
    assert env["WATTSPAN_COLLECTORS__RAPL__ROOT"]["value"] == "/host/sys/class/powercap"


def test_daemonset_node_name_as_host(container: dict[str, Any]) -> None:
    env = _env(container)
    names = [e["name"] for e in container["env"]]
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    host = env["WATTSPAN_AGENT__HOST"]["value"]
    assert "$(NODE_NAME)" in host
    # $(VAR) expands only from variables defined earlier in the list.
    assert names.index("NODE_NAME") < names.index("WATTSPAN_AGENT__HOST")
    # Whatever the node is called, the agent reads it as its host name.
    for node in ("worker-1", "1234", "true", "gpu-node.example.com"):
        config = load_config(
            None, environ={"WATTSPAN_AGENT__HOST": host.replace("$(NODE_NAME)", node)}
        )
        assert config.host == node


def test_daemonset_environment_loads(container: dict[str, Any], tmp_path: Path) -> None:
    """The ConfigMap's file plus the container's WATTSPAN_* variables form a valid config."""
    cm = _one("configmap.yaml", "ConfigMap")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/wattspan")
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert Path(config_arg).parent == Path(mount["mountPath"])
    raw = cm["data"][Path(config_arg).name]
    env = {
        e["name"]: e["value"].replace("$(NODE_NAME)", "node-a")
        for e in container["env"]
        if e["name"].startswith("WATTSPAN_") and "value" in e
    }
    path = tmp_path / "wattspan.toml"
    path.write_text(raw, encoding="utf-8")
    config = load_config(path, environ=env)
    assert config.host == "node-a"
    assert config["metrics"]["listen"] == "0.0.0.0"
    assert config["metrics"]["port"] == 9879
    assert config["otlp"]["listen"] == "0.0.0.0"
    assert config["otlp"]["port"] == 4317
    assert config["collectors.rapl"]["root"] == "/host/sys/class/powercap"
    state = Path(config["store"]["path"]).parent
    assert config.state_dir == state
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert str(state) in writable  # the store and queues need a writable volume


def test_daemonset_ports(container: dict[str, Any]) -> None:
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["metrics"]["containerPort"] == 9879
    assert "hostPort" not in ports["metrics"]
    assert ports["otlp-grpc"]["containerPort"] == 4317
    assert ports["otlp-grpc"]["hostPort"] == 4317  # pipelines reach it at status.hostIP
    assert all(p.get("protocol", "TCP") == "TCP" for p in ports.values())
    assert container["args"][:1] == ["agent"]


def test_daemonset_tolerates_every_taint(pod: dict[str, Any]) -> None:
    assert {"operator": "Exists"} in pod["tolerations"]


def test_daemonset_resources(container: dict[str, Any]) -> None:
    res = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= res[kind].keys()
    # Steady RSS is about 55 MB (bench/README.md): the limit must leave room.
    assert _mebibytes(res["limits"]["memory"]) >= 128
    assert _mebibytes(res["requests"]["memory"]) <= _mebibytes(res["limits"]["memory"])


def _mebibytes(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix in sorted(units, key=len, reverse=True):
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * units[suffix]
    return float(q) / 2**20


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_daemonset_probes(container: dict[str, Any], probe: str) -> None:
    get = container[probe]["httpGet"]
    # /metrics needs the bearer token, which an httpGet probe could only carry in plain
    # text in the pod spec; /healthz is answered by the same server threads without one.
    assert get["path"] == HEALTH_PATH
    assert get["port"] in ("metrics", 9879)
    assert get.get("scheme", "HTTP") == "HTTP"  # the DaemonSet serves /metrics without TLS
    assert container[probe].get("timeoutSeconds", 1) >= 2


def test_daemonset_tokens_from_a_secret(
    pod: dict[str, Any], container: dict[str, Any], tmp_path: Path
) -> None:
    """Both listeners get a token file from the Secret's mount, and with the files the
    Secret would hold, the agent's own code reads both tokens."""
    from wattspan.agent.receiver.security import load_bearer_token

    env = _env(container)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    secret_volumes = [v for v in pod["volumes"] if "secret" in v]
    assert len(secret_volumes) == 1
    vol = secret_volumes[0]
    assert vol["secret"]["secretName"] == SECRET_NAME
    assert vol["secret"].get("optional", False) is False  # no token, no agent: fail closed
    assert vol["secret"]["defaultMode"] == 0o400
    mount = mounts[vol["name"]]
    assert mount["readOnly"] is True
    keys = {item["key"]: item["path"] for item in volumes[vol["name"]]["secret"]["items"]}
    assert set(keys) == set(SECRET_KEYS)
    for section, key in (("OTLP", "otlp-token"), ("METRICS", "metrics-token")):
        path = env[f"WATTSPAN_{section}__BEARER_TOKEN_FILE"]["value"]
        assert path == f"{mount['mountPath']}/{keys[key]}"
        fake = tmp_path / keys[key]
        fake.write_text("0123abcd" * 8)  # what `openssl rand -hex 32` prints, no newline
        assert load_bearer_token(section.lower(), fake, None) == b"0123abcd" * 8


def test_readme_creates_the_secret_the_daemonset_mounts() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    assert f"kubectl -n wattspan create secret generic {SECRET_NAME}" in readme
    for key in SECRET_KEYS:
        assert f"--from-literal={key}=" in readme
    # ...and how Prometheus and OTLP clients send the tokens.
    assert "credentials_file:" in readme
    assert "OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20" in readme


def test_unit_open_files_fit_the_otlp_connections() -> None:
    """LimitNOFILE leaves the default otlp.max_connections its room beside the descriptors
    the rest of the agent keeps (the receiver would otherwise lower the cap, with a
    warning at every start)."""
    from wattspan.agent.receiver import FD_RESERVE

    limit = int(_unit()["Service"]["LimitNOFILE"])
    config = load_config(EXAMPLE, environ={})
    assert limit - FD_RESERVE >= config["otlp"]["max_connections"]


def test_daemonset_security_context(pod: dict[str, Any], container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("hostNetwork", False) is False
    assert pod["automountServiceAccountToken"] is False
    # With a read-only root, Python and SQLite need a writable /tmp.
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_daemonset_prometheus_annotations(daemonset: dict[str, Any]) -> None:
    ann = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "9879"
    assert ann["prometheus.io/path"] == "/metrics"


def test_daemonset_rolling_update(daemonset: dict[str, Any]) -> None:
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] in (1, "1") or str(
        strategy["rollingUpdate"]["maxUnavailable"]
    ).endswith("%")


def test_service_and_account(daemonset: dict[str, Any], pod: dict[str, Any]) -> None:
    svc = _one("service.yaml", "Service")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["metrics"]["port"] == 9879
    assert ports["metrics"]["targetPort"] in ("metrics", 9879)
    sa = _one("serviceaccount.yaml", "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    cm = _one("configmap.yaml", "ConfigMap")
    cm_volumes = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert cm_volumes == [cm["metadata"]["name"]]


def test_namespace_allows_host_pid() -> None:
    ns = _one("namespace.yaml", "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# --- container --------------------------------------------------------------------------------


def test_containerfile_installs_the_package() -> None:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    assert "pip install /src" in text
    # Every source folder the distribution maps must be copied into the build stage.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    for folder in package_dirs:
        assert f"COPY {folder}/ {folder}/" in text, f"Containerfile does not copy {folder}/"
    readme = pyproject["project"].get("readme")
    if readme:
        assert readme in text
    assert 'ENTRYPOINT ["wattspan"]' in text
    assert '"agent", "--config", "/etc/wattspan/wattspan.toml"' in text


def test_distribution_lists_every_subpackage() -> None:
    """The image is a plain (non-editable) ``pip install`` of the repository: a subpackage
    missing from ``[tool.setuptools] packages`` works in an editable checkout but is absent
    from the wheel, and the agent in the container fails on import."""
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    packages = setuptools_cfg.get("packages")
    if not isinstance(packages, list):
        pytest.skip("packages found automatically (packages.find)")
    expected = set()
    for name, folder in setuptools_cfg["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            expected.add(".".join([name, *rel.parts]))
    missing = sorted(expected - set(packages))
    assert missing == [], f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


# --- Grafana dashboards ConfigMap ------------------------------------------------------------

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS_CONFIGMAP = "grafana-dashboards"
#: kubectl's client-side apply keeps the whole object in one annotation, at most this long.
LAST_APPLIED_LIMIT = 262_144
#: What the API server stores of one object (etcd's request limit is a little above).
OBJECT_LIMIT = 1_048_576


def _dashboard_files() -> list[str]:
    return sorted(f"dashboards/{p.name}" for p in (GRAFANA / "dashboards").glob("*.json"))


def test_kustomization_generates_the_dashboards_configmap() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kust["components"] == ["../grafana"]
    comp = yaml.safe_load((GRAFANA / "kustomization.yaml").read_text(encoding="utf-8"))
    assert comp["kind"] == "Component"
    (gen,) = comp["configMapGenerator"]
    assert gen["name"] == DASHBOARDS_CONFIGMAP
    # Every generated dashboard and nothing else: a new dashboard must be added here.
    assert sorted(gen["files"]) == _dashboard_files() and len(gen["files"]) >= 8
    opts = comp["generatorOptions"]
    # The sidecar matches the label's value as a string; a fixed name lets it be replaced.
    assert opts["labels"] == {"grafana_dashboard": "1"}
    assert opts["disableNameSuffixHash"] is True


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_builds_the_dashboards_configmap() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    (cm,) = [
        d
        for d in yaml.safe_load_all(out.stdout)
        if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == DASHBOARDS_CONFIGMAP
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "wattspan"
    files = _dashboard_files()
    assert sorted(cm["data"]) == [f.removeprefix("dashboards/") for f in files]
    for f in files:
        text = (GRAFANA / f).read_text(encoding="utf-8")
        assert cm["data"][f.removeprefix("dashboards/")] == text
        assert json.loads(text)["uid"] == Path(f).stem
    size = len(json.dumps(cm, separators=(",", ":")))
    assert size < OBJECT_LIMIT
    if size >= LAST_APPLIED_LIMIT:
        # Too big for client-side apply's annotation: the documented command must be
        # server-side apply, which keeps no such annotation.
        readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
        assert "kubectl apply --server-side -k deploy/kubernetes" in readme
