"""docs/management.md: every ```bash/```shell curl example runs, in order, against a real server.

Conventions of the page (kept by these tests):
* examples address the management API as http://127.0.0.1:8081 (rewritten here to the test port);
* the model store holds mymodel.mar (1.0), mymodel_v2.mar (2.0 of the same model) and othermodel.mar;
* each curl block names its status in a ``# expect: NNN`` comment.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, make_archive

DOC = ROOT / "docs" / "management.md"
DOC_ADDRESS = "http://127.0.0.1:8081"
BLOCK = re.compile(r"^```(bash|shell)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
EXPECT = re.compile(r"^#\s*expect:\s*(\d{3})\s*$", re.M)

HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return ["ok"] * len(data)
"""


def curl_blocks() -> list[tuple[int, str, int]]:
    """(line number, command text, expected status) for every curl example, in page order."""
    text = DOC.read_text()
    out = []
    for m in BLOCK.finditer(text):
        body = m.group(2)
        if "curl" not in body:
            continue
        expect = EXPECT.search(body)
        line = text.count("\n", 0, m.start()) + 1
        assert expect, f"docs/management.md:{line}: curl example without a '# expect: NNN' line"
        out.append((line, body, int(expect.group(1))))
    return out


def instrument(cmd: str, address: str) -> str:
    """Point the example at the test server and make curl print the status code last."""
    cmd = cmd.replace(DOC_ADDRESS, address)
    return re.sub(r"(?m)^(\s*)curl ", r"\1curl -sS -w '\\n%{http_code}' ", cmd)


def test_every_route_has_an_example() -> None:
    cmds = " ".join(" ".join(b.split()) for _, b, _ in curl_blocks())
    for pattern in (r"-X POST \"?http://127\.0\.0\.1:8081/models",        # register
                    r"curl \"?http://127\.0\.0\.1:8081/models[\"?\s]",   # list
                    r"curl \"?http://127\.0\.0\.1:8081/models/\w+",       # describe
                    r"-X PUT \"?http://127\.0\.0\.1:8081/models/\w+[?/]",  # scale
                    r"/set-default",                                     # set default
                    r"-X DELETE \"?http://127\.0\.0\.1:8081/models/\w+"):  # unregister
        assert re.search(pattern, cmds), f"no curl example matches {pattern}"
    assert "Content-Type: application/json" in cmds  # register with a JSON body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_examples_run_and_answer_the_documented_status(model_store: Path, server_factory: Any) -> None:
    make_archive(model_store, "mymodel", HANDLER)
    make_archive(model_store, "mymodel_v2", HANDLER, version="2.0")
    make_archive(model_store, "othermodel", HANDLER)
    srv = server_factory(model_store, [], args=["--enable-model-api"]).start()
    failures = []
    for line, cmd, expected in curl_blocks():
        run = subprocess.run(["bash", "-c", instrument(cmd, srv.mgmt)], capture_output=True, text=True, timeout=120)
        lines = run.stdout.rstrip("\n").split("\n")
        status = lines[-1].strip() if lines else ""
        if run.returncode != 0 or status != str(expected):
            failures.append(f"docs/management.md:{line}: exit {run.returncode}, status {status!r} "
                            f"(documented {expected}); body {' '.join(lines[:-1])[:300]!r}; stderr {run.stderr[-300:]!r}")
    assert not failures, "\n".join(failures)
