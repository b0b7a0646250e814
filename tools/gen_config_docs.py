"""Regenerate config/config.properties and the key tables of docs/configuration.md and docs/deployment.md
from ServerConfig (run after adding a config key; tests fail while they are stale)."""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from modelserve.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent


def _value(default: object) -> str:
    return "" if default is None else (str(default).lower() if isinstance(default, bool) else str(default))


def properties() -> str:
    lines = ["# modelserve server configuration (TorchServe-style config.properties).",
             "# Every key modelserve reads, set to its default. Use: modelserve --start --ts-config config/config.properties",
             "# Keys TorchServe has but modelserve does not use are accepted and listed once at start as ignored;",
             "# unknown keys are listed once at start as unknown. Lines starting with # are comments.", ""]
    for f in fields(ServerConfig):
        lines += [f"# {f.metadata['doc']}", f"{f.name}={_value(f.default)}" if f.default is not None else f"#{f.name}=", ""]
    return "\n".join(lines)


def config_table() -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | `{_value(f.default)}` | {f.metadata['doc']} |" for f in fields(ServerConfig)]
    return "\n".join(rows)


def replace_table(path: Path, header_start: str, table: str) -> str:
    text = path.read_text()
    pattern = re.compile(rf"^{re.escape(header_start)}[^\n]*\n(?:\|[^\n]*\n)+", re.M)
    if not pattern.search(text):
        raise SystemExit(f"no table starting with {header_start!r} in {path}")
    return pattern.sub(lambda _: table + "\n", text, count=1)


def main() -> int:
    (ROOT / "config" / "config.properties").write_text(properties())
    doc = ROOT / "docs" / "configuration.md"
    doc.write_text(replace_table(doc, "| key | default | meaning |", config_table()))
    env_table = subprocess.run([sys.executable, "-m", "modelserve.envconfig", "--markdown"],
                               capture_output=True, text=True, check=True).stdout.strip()
    dep = ROOT / "docs" / "deployment.md"
    dep.write_text(replace_table(dep, "| Environment variable |", env_table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
