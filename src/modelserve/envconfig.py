"""Configuration from ``MODELSERVE_<KEY>`` environment variables, for containers.

Every ServerConfig key can be set as ``MODELSERVE_`` + the key in upper case, e.g.
``MODELSERVE_INFERENCE_ADDRESS=http://0.0.0.0:8080`` or ``MODELSERVE_DEFAULT_WORKERS_PER_MODEL=2``.
Values are the same strings config.properties takes. Precedence, highest first:
command-line flags > environment > config file > defaults.

Also here, for container images and their probes:

* ``python -m modelserve.envconfig --healthcheck [--ts-config FILE]``: GET /ping on the inference
  address that the config file and the environment name (exit 0 when 200, else 1); the Docker
  HEALTHCHECK runs it, so it follows ``MODELSERVE_INFERENCE_ADDRESS``.
* ``python -m modelserve.envconfig --markdown``: the table of variables in docs/deployment.md.
* ``cgroup_cpu_limit()``: the CPUs a container may use (``os.cpu_count()`` sees the whole host).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import MISSING, fields
from typing import Mapping, Optional, Sequence

from .config import ServerConfig, parse_properties, split_address
from .devices import cgroup_cpu_limit, effective_cpus  # noqa: F401 - re-exported for the deployment tools
from .errors import ConfigError

ENV_PREFIX = "MODELSERVE_"

# MODELSERVE_* names the server and its workers use among themselves: never config keys, never warned about.
INTERNAL_VARS = frozenset({"MODELSERVE_PID_FILE", "MODELSERVE_WORKER_SPEC", "MODELSERVE_WORKER_FD"})


def env_name(key: str) -> str:
    """``inference_address`` -> ``MODELSERVE_INFERENCE_ADDRESS``."""
    return ENV_PREFIX + key.upper()


def env_overrides(environ: Optional[Mapping[str, str]] = None) -> tuple[dict[str, str], list[str]]:
    """``({config_key: raw string}, [unknown MODELSERVE_* names])`` from ``environ`` (default os.environ).

    Only upper-case names count as keys (``MODELSERVE_JOB_QUEUE_SIZE``); a MODELSERVE_* name that is no
    ServerConfig key (a typo, a lower-case spelling) is returned in the second list, sorted, for one
    warning at start. The internal names in INTERNAL_VARS are neither.
    """
    env = os.environ if environ is None else environ
    known = set(ServerConfig.keys())
    overrides: dict[str, str] = {}
    unknown: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in INTERNAL_VARS:
            continue
        suffix = name[len(ENV_PREFIX):]
        key = suffix.lower()
        if suffix == key.upper() and key in known:
            overrides[key] = env[name]
        else:
            unknown.append(name)
    return overrides, unknown


def apply_env(config: ServerConfig, environ: Optional[Mapping[str, str]] = None
              ) -> tuple[ServerConfig, tuple[str, ...], tuple[str, ...]]:
    """``config`` with the environment's values on top: ``(config, keys set, unknown names)``.

    A value that does not convert raises ConfigError naming the variable.
    """
    values, unknown = env_overrides(environ)
    for key, raw in values.items():
        try:
            config = ServerConfig.from_mapping({key: raw}, base=config)
        except ConfigError as exc:
            detail = str(exc).split(": ", 1)[-1]
            raise ConfigError(f"environment variable {env_name(key)}: {detail}") from None
    return config, tuple(sorted(values)), tuple(unknown)


def env_report(from_env: Sequence[str], unknown: Sequence[str] = ()) -> list[tuple[int, str]]:
    """``(logging level, line)`` pairs that say at start which keys the environment set and what it ignored."""
    lines = []
    if from_env:
        lines.append((logging.INFO, "config: set by the environment (flags > environment > config file > defaults): "
                      + ", ".join(f"{k} ({env_name(k)})" for k in from_env)))
    if unknown:
        lines.append((logging.WARNING, "config: ignoring environment variables that are no config key: "
                      + ", ".join(unknown)))
    return lines


# -- container helpers -----------------------------------------------------------------------------------

def resolved_config(ts_config: Optional[str], environ: Optional[Mapping[str, str]] = None) -> ServerConfig:
    """Defaults < ``ts_config`` < environment (what the server sees when no flag overrides a key)."""
    values: dict[str, str] = {}
    if ts_config:
        try:
            with open(ts_config, encoding="utf-8") as f:
                values = parse_properties(f.read())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {ts_config}: {exc.strerror}") from None
    known = set(ServerConfig.keys())
    config = ServerConfig.from_mapping({k: v for k, v in values.items() if k in known})
    return apply_env(config, environ)[0]


def _probe_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def ping_url(config: ServerConfig) -> str:
    host, port = split_address(config.inference_address, 8080)
    return f"http://{_probe_host(host)}:{port}/ping"


def healthcheck(ts_config: Optional[str], timeout: float = 5.0,
                environ: Optional[Mapping[str, str]] = None) -> int:
    """0 when GET /ping on the configured inference address answers 200, else 1 (with the reason on stderr)."""
    try:
        url = ping_url(resolved_config(ts_config, environ))
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http to ourselves)
            if resp.status == 200:
                return 0
            print(f"healthcheck: {url} answered {resp.status}", file=sys.stderr)
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url} answered {exc.code}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
    return 1


def _default_text(f) -> str:  # type: ignore[no-untyped-def]
    value = f.default if f.default is not MISSING else None
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if value != "" else "(empty)"


def markdown_table() -> str:
    """One row per ServerConfig key: variable, config.properties key, default, meaning."""
    rows = ["| Environment variable | config.properties key | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in fields(ServerConfig):
        doc = str(f.metadata.get("doc", "")).replace("|", "\\|")
        rows.append(f"| `{env_name(f.name)}` | `{f.name}` | {_default_text(f)} | {doc} |")
    return "\n".join(rows) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelserve.envconfig",
                                description="Container helpers for modelserve's environment configuration.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--healthcheck", action="store_true", help="GET /ping on the configured inference address")
    what.add_argument("--markdown", action="store_true", help="print the MODELSERVE_* table for the docs")
    what.add_argument("--show", action="store_true", help="print the keys the environment sets")
    p.add_argument("--ts-config", help="the config.properties the server reads")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for /ping")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    if args.show:
        values, unknown = env_overrides()
        for key, raw in values.items():
            print(f"{key}={raw}")
        for _, line in env_report((), unknown):
            print(line, file=sys.stderr)
        return 0
    return healthcheck(args.ts_config, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
