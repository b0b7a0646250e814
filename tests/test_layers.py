"""The module layering of ARCHITECTURE.md, checked by machine; and the frontend never imports torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "src" / "modelserve"

# layer of each module (a module may import from its own layer and the ones below)
LAYERS = {
    0: ["errors", "types"],
    1: ["config", "log", "archive", "wire", "handler", "handler_utils", "devices", "auth", "fetch",
        "metrics_config", "envconfig"],
    2: ["worker", "metrics", "sysmetrics", "batching", "pool", "oip", "spawn"],
    3: ["registry", "service", "snapshot", "runtime_metrics"],
    4: ["http", "grpc", "console"],
    5: ["server", "cli", "bench", "__init__", "compat"],
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Top-level modelserve modules that ``path`` imports (relative or absolute)."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PKG).parts) - 1  # 0 for modules directly in the package
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 < depth:
                    continue  # an import inside the same subpackage
                if node.level - 1 > depth:
                    continue
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                out.update(names)
            elif node.module and node.module.startswith("modelserve."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("modelserve."):
                    out.add(a.name.split(".")[1])
    return out


def test_every_module_has_a_layer_and_imports_only_downwards():
    problems = []
    for path in PKG.rglob("*.py"):
        if "_generated" in path.parts or "compat" in path.parts:
            continue
        top = _top(path)
        assert top in LAYER_OF, f"{path.relative_to(ROOT)}: module {top!r} has no layer in this test"
        for imported in _imports(path):
            if imported in LAYER_OF and LAYER_OF[imported] > LAYER_OF[top]:
                problems.append(f"{path.relative_to(ROOT)} (layer {LAYER_OF[top]}) imports {imported} "
                                f"(layer {LAYER_OF[imported]})")
    assert not problems, "\n".join(problems)


def test_frontend_never_imports_torch():
    code = ("import sys, modelserve, modelserve.cli, modelserve.server, modelserve.http.inference, "
            "modelserve.http.v2, modelserve.grpc.server, modelserve.console; "
            "bad = [m for m in ('torch', 'numpy') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_archiver_and_handlers_use_only_public_parts():
    for path in (ROOT / "tools" / "archiver").glob("*.py"):
        for imported in _imports_abs(path):
            assert imported in ("archive",), f"{path.name} imports modelserve.{imported}"
    for path in (ROOT / "handlers").glob("*.py"):
        for imported in _imports_abs(path):
            assert imported in ("handler", "handler_utils", "oip", "errors") or imported == "", \
                f"handlers/{path.name} imports modelserve.{imported}"


def _imports_abs(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module == "modelserve" or node.module.startswith("modelserve.")):
            out.add(node.module.split(".")[1] if "." in node.module else "")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("modelserve."):
                    out.add(a.name.split(".")[1])
    return out
