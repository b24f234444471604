"""Keeps Procfile, deploy/docker-compose.yml, deploy/k8s/ and the systemd units honest:
the Procfile really serves a graph run, the dashboard and beat under honcho, every
graph-worker and dashboard flag they use exists, the dashboard binds as its security model
expects, every file and program they mention exists, and environment variable names,
ports and timeouts agree with the code."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import click
import pytest
import yaml
from flower.options import options as flower_options

from celery_graph import config
from celery_graph.cli import celery_graph as cli_group
from celery_graph.cli.dashboard import ui_command
from celery_graph.testing import free_port
from celery_graph.worker.heartbeat import live_workers
from tests.apps import ops_tasks as t
from tests.support import ROOT
from tests.support.apps import build_app
from tests.support.helpers import wait_for
from tests.support.processes import graph_worker_help, subprocess_env

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
# every variable celery-graph itself reads: the settings table of celery_graph/config.py,
# and the options of its commands that read one (the dashboard's --basic-auth...)
_CTX = click.Context(cli_group)
CLI_ENV = {
    p.envvar
    for name in cli_group.list_commands(_CTX)  # the group loads its commands on first use
    for p in cli_group.get_command(_CTX, name).params
    if isinstance(p.envvar, str)
}
CODE_ENV = {s.env for s in (*config.SETTINGS, *config.WORKER_SETTINGS)} | CLI_ENV
CELERY_ENV = {"CELERY_APP", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}
DEPLOY_ONLY_ENV = {"APP_IMAGE", "POD_NAME"}  # image name, Kubernetes downward API


# -- reading the files ----------------------------------------------------------------


def procfile() -> dict[str, str]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, cmd = line.split(":", 1)
            out[name.strip()] = cmd.strip()
    return out


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str, name: str | None = None) -> dict:
    """The one document of ``kind`` (named ``name``, when several are of that kind)."""
    (doc,) = [
        d
        for d in k8s_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return doc


def systemd_unit(name: str = "graph-worker") -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(SYSTEMD / f"{name}.service")
    return unit


def k8s_container(deployment: str = "graph-worker") -> dict:
    return k8s("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def k8s_worker_container() -> dict:
    return k8s_container("graph-worker")


def worker_commands() -> dict[str, list[str]]:
    """Every graph-worker command line in the deploy files, as argv lists."""
    container = k8s_worker_container()
    return {
        "Procfile": shlex.split(procfile()["worker"]),
        "docker-compose": compose()["services"]["worker"]["command"],
        "k8s": container["command"] + container["args"],
        "systemd": shlex.split(systemd_unit()["Service"]["ExecStart"]),
    }


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# -- graph-worker command lines -------------------------------------------------------


@pytest.mark.slow
def test_every_graph_worker_flag_in_the_deploy_files_is_in_its_help():
    documented = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", graph_worker_help()))
    for where, argv in worker_commands().items():
        assert Path(argv[0]).name == "graph-worker", where
        flags = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")]
        assert flags, where
        for flag in flags:
            assert flag in documented, f"{where}: {flag} is not in graph-worker --help"


def test_flower_commands_use_real_flower_options():
    known = {f"--{name}" for name in flower_options._options}
    commands = {
        "Procfile": shlex.split(procfile()["flower"]),
        "docker-compose": compose()["services"]["flower"]["command"],
    }
    for where, argv in commands.items():
        assert argv[:2] == ["celery", "flower"], where
        for arg in argv[2:]:
            assert arg.split("=", 1)[0] in known, f"{where}: {arg}"


def graceful_timeout(argv: list[str], env: dict[str, str]) -> float:
    value = flag_value(argv, "--graceful-timeout") or env.get(config.ENV_GRACEFUL_TIMEOUT)
    return float(value) if value else config.DEFAULT_GRACEFUL_TIMEOUT


def test_stop_timeouts_leave_room_for_the_graceful_timeout():
    cmds = worker_commands()

    # the grace period must cover the graceful timeout plus time to hand tasks back
    # (in the tests here, hand-back after the timeout takes 2-3 s)
    def check(where, grace, timeout):
        assert timeout + 5 <= grace <= timeout + 60, (where, grace, timeout)

    pod = k8s("Deployment", "graph-worker")["spec"]["template"]["spec"]
    check("k8s", pod["terminationGracePeriodSeconds"], graceful_timeout(cmds["k8s"], {}))

    svc = compose()["services"]["worker"]
    check(
        "compose",
        int(svc["stop_grace_period"].rstrip("s")),
        graceful_timeout(cmds["docker-compose"], svc["environment"]),
    )
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"

    service = systemd_unit()["Service"]
    env = dict(v.split("=", 1) for v in service["Environment"].split())
    check("systemd", int(service["TimeoutStopSec"]), graceful_timeout(cmds["systemd"], env))
    # SIGTERM to the main process only; control-group would kill running tasks at once
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"


def test_liveness_probe_is_healthz_which_needs_no_redis():
    doc = (ROOT / "deploy" / "k8s" / "worker-deployment.yaml").read_text()
    live = doc.split("livenessProbe:", 1)[1].split("Probe:", 1)[0]
    assert "path: /healthz" in live


def test_metrics_port_service_and_hpa_agree_with_the_code():
    container = k8s_worker_container()
    port = int(flag_value(container["args"], "--metrics-port"))
    (container_port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert container_port["containerPort"] == port

    deployment = k8s("Deployment", "graph-worker")
    service = k8s("Service", "graph-worker-metrics")
    hpa = k8s("HorizontalPodAutoscaler")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == port
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)

    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    external = hpa["spec"]["metrics"][0]["external"]
    metrics_source = (ROOT / "celery_graph" / "worker" / "endpoint.py").read_text()
    assert f'"{external["metric"]["name"]}"' in metrics_source  # a metric we export
    assert set(external["metric"]["selector"]["matchLabels"]) == {"queue"}  # its label

    svc = compose()["services"]["worker"]
    assert str(port) in [str(p) for p in svc["expose"]]
    assert flag_value(svc["command"], "--metrics-port") == str(port)


def test_compose_persists_redis_and_runs_replicas_and_flower():
    services = compose()["services"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "%h" in flag_value(services["worker"]["command"], "--hostname")  # unique names
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]  # API needs auth


# -- the dashboard and beat -----------------------------------------------------------

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def ui_commands() -> dict[str, list[str]]:
    """Every `celery-graph ui` command line in the deploy files, as argv lists."""
    container = k8s_container("celery-graph-ui")
    return {
        "Procfile": shlex.split(procfile()["ui"]),
        "docker-compose": compose()["services"]["ui"]["command"],
        "k8s": container["command"] + container["args"],
        "systemd": shlex.split(systemd_unit("celery-graph-ui")["Service"]["ExecStart"]),
    }


def ui_flags() -> set[str]:
    """The options `celery-graph ui --help` lists (the command's click parameters)."""
    return {opt for p in ui_command.params for opt in (*p.opts, *p.secondary_opts)}


def host_of(argv: list[str]) -> str:
    """The address a ui command listens on; ``${VAR:-default}`` counts as its default."""
    host = flag_value(argv, "--host") or "127.0.0.1"
    default = re.fullmatch(r"\$\{\w+:-([^}]*)\}", host)
    return default.group(1) if default else host


def test_every_dashboard_flag_in_the_deploy_files_is_a_ui_option():
    known = ui_flags()
    for where, argv in ui_commands().items():
        assert Path(argv[0]).name == "celery-graph" and argv[1] == "ui", where
        for arg in argv[2:]:
            if arg.startswith("-"):
                assert arg.split("=", 1)[0] in known, f"{where}: {arg} is not a ui option"


def test_the_dashboard_binds_as_its_security_model_expects():
    """Loopback needs nothing; any other address asks for credentials, given from the
    environment or a secret (never on the command line, where `ps` shows them), and
    names the Host a proxy in front of it sends."""
    commands = ui_commands()
    for where, argv in commands.items():
        assert "--basic-auth" not in " ".join(argv), f"{where}: credentials in argv"
        assert "--no-auth" not in argv, where
    # Procfile and systemd: loopback (the Procfile's comment says how to expose it)
    assert host_of(commands["Procfile"]) in LOOPBACK
    assert "CELERY_GRAPH_UI_BASIC_AUTH" in (ROOT / "Procfile").read_text()
    assert host_of(commands["systemd"]) in LOOPBACK
    assert flag_value(commands["systemd"], "--allowed-host")  # the reverse proxy's name
    # Compose: every interface of its container, credentials required from the environment
    ui = compose()["services"]["ui"]
    assert host_of(commands["docker-compose"]) == "0.0.0.0"
    assert ui["environment"]["CELERY_GRAPH_UI_BASIC_AUTH"].startswith(
        "${CELERY_GRAPH_UI_BASIC_AUTH:?"
    )
    assert flag_value(commands["docker-compose"], "--allowed-host") == "ui"  # its service
    # Kubernetes: the pod's address, credentials from a Secret, the Service's name allowed
    container = k8s_container("celery-graph-ui")
    assert host_of(commands["k8s"]) == "0.0.0.0"
    (auth,) = [e for e in container["env"] if e["name"] == "CELERY_GRAPH_UI_BASIC_AUTH"]
    assert "secretKeyRef" in auth["valueFrom"]
    service = k8s("Service", "celery-graph-ui")
    assert flag_value(commands["k8s"], "--allowed-host") == service["metadata"]["name"]


def test_the_k8s_dashboard_service_reaches_its_pods_and_probes_need_no_credentials():
    deployment, service = k8s("Deployment", "celery-graph-ui"), k8s("Service", "celery-graph-ui")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    container = k8s_container("celery-graph-ui")
    (port,) = container["ports"]
    assert port["containerPort"] == int(flag_value(container["args"], "--port"))
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"  # open without credentials (ui/server.py)
    assert {"name": "Host", "value": "localhost"} in probe["httpHeaders"]  # a loopback Host
    assert "/healthz" in (ROOT / "celery_graph" / "ui" / "server.py").read_text()


def test_one_beat_per_deployment():
    assert shlex.split(procfile()["beat"])[:2] == ["celery", "beat"]
    beat = compose()["services"]["beat"]
    assert beat["command"][:2] == ["celery", "beat"] and beat["deploy"]["replicas"] == 1
    deployment = k8s("Deployment", "celery-beat")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two during a rollout
    assert k8s_container("celery-beat")["command"] == ["celery"]
    argv = shlex.split(systemd_unit("celery-beat")["Service"]["ExecStart"])
    assert Path(argv[0]).name == "celery" and argv[1] == "beat"


# -- what the deploy files mention exists ---------------------------------------------


def deploy_files() -> list[Path]:
    return [ROOT / "Procfile", *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]


# a path in the repository (docs/deployment.md), a file next to the deploy file
# (worker-deployment.yaml), or a systemd unit's installed path (/etc/systemd/system/X)
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|deploy|examples|tests|celery_graph)/[\w./-]*\w)")
SIBLING = re.compile(r"(?<![\w./-])([\w-]+\.(?:ya?ml|service))\b")
INSTALLED_UNIT = re.compile(r"/etc/systemd/system/([\w.-]+\.service)")
# systemd ordering and dependencies name the host's units (redis-server.service)
HOST_UNITS = re.compile(r"^(?:After|Before|Wants|Requires|BindsTo|PartOf|WantedBy)=.*$", re.M)


def test_every_file_the_deploy_files_mention_exists():
    for path in deploy_files():
        text = HOST_UNITS.sub("", path.read_text())
        where = path.relative_to(ROOT)
        for mentioned in REPO_PATH.findall(text):
            assert (ROOT / mentioned).exists(), f"{where} mentions {mentioned}, which is missing"
        for name in SIBLING.findall(text):
            if name == "docker-compose.yml" and "docker compose" in text:
                continue  # named with its directory in the command above it
            assert (path.parent / name).exists(), f"{where} mentions {name}, not beside it"
        for unit in INSTALLED_UNIT.findall(text):
            assert unit == path.name, f"{where} says it installs as {unit}"


def console_scripts() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


def test_every_program_the_deploy_files_run_is_installed():
    """The programs the processes run are celery-graph's console scripts, Celery's
    `celery`, or the Redis server's own image commands."""
    ours = console_scripts()
    assert {"graph-worker", "celery-graph"} <= ours
    programs = {
        *(shlex.split(cmd)[0] for cmd in procfile().values()),
        *(
            Path(shlex.split(systemd_unit(p.stem)["Service"]["ExecStart"])[0]).name
            for p in SYSTEMD.glob("*.service")
        ),
    }
    for doc in k8s_docs():
        if doc["kind"] == "Deployment":
            programs.add(doc["spec"]["template"]["spec"]["containers"][0]["command"][0])
    for name, service in compose()["services"].items():
        if name != "redis":
            programs.add(service["command"][0])
    assert programs <= ours | {"celery"}, programs - ours


# -- environment variables ------------------------------------------------------------


def env_names_in(text: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))


def deploy_env_names() -> dict[str, set[str]]:
    c = compose()
    names = {
        "Procfile": env_names_in((ROOT / "Procfile").read_text()),
        "docker-compose": env_names_in((DEPLOY / "docker-compose.yml").read_text())
        | {k for s in c["services"].values() for k in s.get("environment", {})},
        "systemd": {
            v.split("=", 1)[0]
            for path in SYSTEMD.glob("*.service")
            for v in systemd_unit(path.stem)["Service"].get("Environment", "").split()
        },
    }
    k8s_names = set()
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            k8s_names |= set(doc["data"])
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            k8s_names |= {e["name"] for e in container["env"]}
            k8s_names |= {n for a in container["args"] for n in re.findall(r"\$\((\w+)\)", a)}
    names["k8s"] = k8s_names
    return names


def is_flower_option(name: str) -> bool:
    option = name.removeprefix("FLOWER_").lower().replace("_", "-")
    return name.startswith("FLOWER_") and option in flower_options._options


def test_environment_variable_names_agree_across_files_and_code():
    source = "\n".join(p.read_text() for p in (ROOT / "celery_graph").rglob("*.py"))
    for name in CODE_ENV:
        assert f'"{name}"' in source, f"{name} is not read anywhere in celery_graph"
    names_by_file = deploy_env_names()
    for where, names in names_by_file.items():
        for name in names:
            known = (
                name in CODE_ENV
                or name in CELERY_ENV
                or name in DEPLOY_ONLY_ENV
                or is_flower_option(name)
            )
            assert known, f"{where} uses {name}, which nothing reads"
    # the settings every deployment needs are spelled the same everywhere
    needed = {"CELERY_APP", "CELERY_BROKER_URL", config.ENV_REDIS_URL, config.ENV_PREFIX}
    assert needed <= names_by_file["docker-compose"]
    assert needed <= names_by_file["k8s"]


def test_the_docs_name_only_real_environment_variables():
    """Configuration names every variable celery-graph reads; no page names one that
    nothing reads (the test suite's own variables are read by the tests)."""
    name = re.compile(r"\b(CELERY_GRAPH_[A-Z_]+)\b")
    documented = set(name.findall((ROOT / "docs" / "configuration.md").read_text()))
    assert documented >= CODE_ENV, f"undocumented: {sorted(CODE_ENV - documented)}"
    code = "\n".join(
        p.read_text() for d in ("celery_graph", "tests") for p in (ROOT / d).rglob("*.py")
    )
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for mentioned in set(name.findall(page.read_text())):
            assert f'"{mentioned}"' in code, (
                f"{page.name} mentions {mentioned}, which nothing reads"
            )


# -- the Procfile, for real -----------------------------------------------------------


@pytest.mark.slow
def test_procfile_under_honcho_serves_a_graph_run_flower_the_dashboard_and_beat(
    redis_url, tmp_path
):
    prefix = f"cgops:procfile:{uuid.uuid4().hex[:6]}"
    queue = f"cgops-procfile-{uuid.uuid4().hex[:8]}"
    metrics_port, flower_port, ui_port = free_port(), free_port(), free_port()
    env = subprocess_env(
        CELERY_APP="tests.apps.opsapp",
        CGOPS_BROKER_URL=redis_url,
        CGOPS_QUEUE=queue,
        CELERY_GRAPH_KEY_PREFIX=prefix,
        CELERY_GRAPH_HEARTBEAT_INTERVAL="1",
        CELERY_GRAPH_METRICS_PORT=str(metrics_port),
        FLOWER_PORT=str(flower_port),
        CELERY_GRAPH_UI_PORT=str(ui_port),
        CELERY_GRAPH_GRACEFUL_TIMEOUT="5",
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    log = open(tmp_path / "honcho.log", "wb")  # noqa: SIM115
    honcho = subprocess.Popen(
        # processes run in tmp_path: beat writes its schedule file there
        [
            sys.executable,
            "-m",
            "honcho",
            "start",
            "-f",
            str(ROOT / "Procfile"),
            "-d",
            str(tmp_path),
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    app = build_app(redis_url, queue, key_prefix=prefix)

    def output() -> str:
        log.flush()
        return (tmp_path / "honcho.log").read_text(errors="replace")

    try:
        wait_for(lambda: live_workers(app), 30, f"the Procfile worker\n{output()}")
        tag = uuid.uuid4().hex[:8]
        run = (t.ops_first.bind(tag=tag) >> t.ops_last.bind(tag=tag, ops_long="x")).submit(app=app)
        assert run.get(timeout=30) == "ops_last<-x"
        from tests.test_flower import get

        wait_for(
            lambda: get(f"http://127.0.0.1:{flower_port}/healthcheck") == "OK",
            30,
            f"Flower from the Procfile\n{output()}",
        )
        assert "celery_graph_worker_tasks_processed_total" in (
            get(f"http://127.0.0.1:{metrics_port}/metrics") or ""
        )
        wait_for(
            lambda: get(f"http://127.0.0.1:{ui_port}/healthz") == '{"ok": true}',
            30,
            f"the dashboard from the Procfile\n{output()}",
        )
        wait_for(lambda: "beat: Starting..." in output(), 30, f"beat\n{output()}")
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(20)
        wait_for(lambda: not live_workers(app), 10, "the worker to deregister")
    finally:
        for pid in map(int, re.findall(r"started \(pid=(\d+)\)", output())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(honcho.pid, signal.SIGKILL)
        honcho.wait(10)
        log.close()
