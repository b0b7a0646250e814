"""modelserve-archiver: formats, torch-model-archiver 0.12 parity, error paths, progress."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelserve.archive import open_archive
from modelserve_archiver import cli
from modelserve_archiver.cli import main

BIN = Path(sys.executable).parent
TMA = BIN / "torch-model-archiver"
FORMATS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
PREFIX = "modelserve-archiver: error: "


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Model inputs in a folder that is also the current directory."""
    d = tmp_path / "src"
    d.mkdir()
    (d / "weights.pt").write_bytes(os.urandom(3000))
    (d / "model.py").write_text("import torch\n")
    (d / "my_handler.py").write_text("def handle(data, ctx):\n    return data\n")
    (d / "requirements.txt").write_text("numpy\n")
    (d / "model-config.yaml").write_text("batchSize: 4\nmaxBatchDelay: 20\n")
    (d / "labels.json").write_text('{"0": "cat"}')
    extra = d / "assets"
    (extra / "vocab").mkdir(parents=True)
    (extra / ".git").mkdir()
    (extra / "__pycache__").mkdir()
    (extra / "top.txt").write_text("top")
    (extra / ".hidden-file").write_text("kept")
    (extra / "vocab" / "words.txt").write_text("a b c")
    (extra / ".git" / "HEAD").write_text("dropped")
    (extra / "__pycache__" / "x.pyc").write_bytes(b"dropped")
    monkeypatch.chdir(d)
    return d


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    return d


def full_args(name: str, export: Path, fmt: str, handler: str = "my_handler:handle") -> list[str]:
    return ["--model-name", name, "--version", "2.1", "--serialized-file", "weights.pt",
            "--model-file", "model.py", "--handler", handler, "--extra-files", "labels.json,assets",
            "-r", "requirements.txt", "-c", "model-config.yaml",
            "--export-path", str(export), "--archive-format", fmt]


EXPECTED_FILES = {
    "weights.pt", "model.py", "my_handler.py", "requirements.txt", "model-config.yaml", "labels.json",
    "top.txt", ".hidden-file", "vocab/words.txt", "MAR-INF/MANIFEST.json",
}


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def archive_names(path: Path) -> set[str]:
    if path.is_dir():
        return tree(path)
    if zipfile.is_zipfile(path):
        return set(zipfile.ZipFile(path).namelist())
    with tarfile.open(path) as tf:
        return {m.name for m in tf.getmembers() if m.isfile()}


def manifest_of(path: Path) -> dict:
    if path.is_dir():
        return json.loads((path / "MAR-INF" / "MANIFEST.json").read_text())
    if zipfile.is_zipfile(path):
        return json.loads(zipfile.ZipFile(path).read("MAR-INF/MANIFEST.json"))
    with tarfile.open(path) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("MAR-INF/MANIFEST.json"))
        return json.loads(tf.extractfile(member).read())


def run_tma(args: list[str], tmp_path: Path) -> None:
    if not TMA.exists():
        pytest.skip("torch-model-archiver is not installed (pip install torch-model-archiver==0.12.0)")
    # torch-model-archiver stages files in $TMPDIR/<model-name>: keep parallel runs apart.
    tmpdir = tmp_path / "tma-tmp"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.run([str(TMA), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def strip_volatile(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("createdOn", "archiverVersion")}


# -- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip(src: Path, export: Path, tmp_path: Path, fmt: str) -> None:
    assert main(full_args("rt", export, fmt)) == 0
    out = export / f"rt{FORMATS[fmt]}"
    assert os.listdir(export) == [out.name], "only the output, no temp files"
    loaded = open_archive(str(out), str(tmp_path / "work"))
    model_dir = Path(loaded.model_dir)
    assert tree(model_dir) == EXPECTED_FILES
    assert (model_dir / "weights.pt").read_bytes() == (src / "weights.pt").read_bytes()
    assert (model_dir / "vocab" / "words.txt").read_text() == "a b c"
    assert loaded.manifest["model"] == {
        "modelName": "rt", "serializedFile": "weights.pt", "handler": "my_handler:handle",
        "modelFile": "model.py", "modelVersion": "2.1", "requirementsFile": "requirements.txt",
        "configFile": "model-config.yaml",
    }
    assert loaded.manifest["runtime"] == "python"
    assert loaded.model_config == {"batchSize": 4, "maxBatchDelay": 20}
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", loaded.manifest["createdOn"])


def test_zip_compression_per_format(src: Path, export: Path) -> None:
    (src / "weights.pt").write_bytes(b"\0" * 100_000)
    assert main(full_args("d", export, "default")) == 0
    assert main(full_args("s", export, "zip-store")) == 0
    deflated = {i.filename: i.compress_type for i in zipfile.ZipFile(export / "d.mar").infolist()}
    stored = {i.filename: i.compress_type for i in zipfile.ZipFile(export / "s.mar").infolist()}
    assert set(deflated.values()) == {zipfile.ZIP_DEFLATED}
    assert set(stored.values()) == {zipfile.ZIP_STORED}


def test_tgz_puts_files_under_model_folder(src: Path, export: Path) -> None:
    assert main(full_args("tg", export, "tgz")) == 0
    names = archive_names(export / "tg.tar.gz")
    assert names == {f"tg/{n}" for n in EXPECTED_FILES}


def test_manifest_json_is_indented_like_torch_model_archiver(src: Path, export: Path) -> None:
    assert main(["--model-name", "j", "--version", "1", "--handler", "my_handler.py",
                 "--export-path", str(export)]) == 0
    text = zipfile.ZipFile(export / "j.mar").read("MAR-INF/MANIFEST.json").decode()
    assert text.startswith('{\n  "createdOn": ')
    assert json.loads(text)["model"] == {"modelName": "j", "handler": "my_handler.py", "modelVersion": "1"}


# -- parity with torch-model-archiver 0.12 -----------------------------------------------------------

PARITY_CASES = {
    "all-flags": ["--serialized-file", "weights.pt", "--model-file", "model.py", "--handler", "my_handler:handle",
                  "--extra-files", "labels.json,assets", "-r", "requirements.txt", "-c", "model-config.yaml"],
    "minimal": ["--handler", "my_handler.py"],
    "builtin-handler": ["--serialized-file", "weights.pt", "--handler", "image_classifier",
                        "--extra-files", "assets"],
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
@pytest.mark.parametrize("fmt", ["default", "tgz", "no-archive"])
def test_same_layout_as_torch_model_archiver(src: Path, tmp_path: Path, case: str, fmt: str) -> None:
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    common = ["--model-name", "par", "--version", "1.5", "--archive-format", fmt, *PARITY_CASES[case]]
    run_tma([*common, "--export-path", str(theirs_dir)], tmp_path)
    assert main([*common, "--export-path", str(ours_dir)]) == 0
    name = f"par{FORMATS[fmt]}"
    theirs, ours = manifest_of(theirs_dir / name), manifest_of(ours_dir / name)
    assert list(ours) == list(theirs)
    assert list(ours["model"]) == list(theirs["model"]), "same keys, same order, same omissions"
    assert strip_volatile(ours) == strip_volatile(theirs)
    assert archive_names(ours_dir / name) == archive_names(theirs_dir / name)


@pytest.mark.parametrize("fmt", ["default", "zip-store", "tgz", "no-archive"])
def test_open_archive_reads_torch_model_archiver_output(src: Path, tmp_path: Path, fmt: str) -> None:
    out_dir = tmp_path / "tma-out"
    out_dir.mkdir()
    run_tma(["--model-name", "tma", "--version", "3", "--archive-format", fmt,
             "--export-path", str(out_dir), *PARITY_CASES["all-flags"]], tmp_path)
    loaded = open_archive(str(out_dir / f"tma{FORMATS[fmt]}"), str(tmp_path / "work"))
    assert tree(Path(loaded.model_dir)) == EXPECTED_FILES
    assert loaded.manifest["model"]["modelName"] == "tma"
    assert loaded.manifest["model"]["modelVersion"] == "3"
    assert loaded.manifest["model"]["handler"] == "my_handler:handle"
    assert loaded.model_config == {"batchSize": 4, "maxBatchDelay": 20}


# -- handler and extra-file rules -------------------------------------------------------------------

def test_handler_file_with_function_is_copied_flat(src: Path, export: Path, tmp_path: Path) -> None:
    sub = src / "code"
    sub.mkdir()
    (sub / "h2.py").write_text("def f(d, c): return d\n")
    assert main(["--model-name", "h", "--version", "1", "--handler", f"{sub}/h2.py:f",
                 "--export-path", str(export)]) == 0
    assert manifest_of(export / "h.mar")["model"]["handler"] == "h2.py:f"
    assert archive_names(export / "h.mar") == {"h2.py", "MAR-INF/MANIFEST.json"}


def test_builtin_handler_is_stored_as_is(src: Path, export: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--model-name", "b", "--version", "1", "--handler", "tensor",
                 "--export-path", str(export)]) == 0
    assert manifest_of(export / "b.mar")["model"]["handler"] == "tensor"
    assert archive_names(export / "b.mar") == {"MAR-INF/MANIFEST.json"}
    assert capsys.readouterr().err == ""


def test_unknown_handler_name_is_stored_with_a_warning(src: Path, export: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["--model-name", "u", "--version", "1", "--handler", "some_module",
                 "--export-path", str(export)]) == 0
    assert manifest_of(export / "u.mar")["model"]["handler"] == "some_module"
    assert capsys.readouterr().err.startswith("modelserve-archiver: warning: handler 'some_module'")


def test_same_file_twice_is_stored_once(src: Path, export: Path) -> None:
    assert main(["--model-name", "dup", "--version", "1", "--handler", "my_handler.py",
                 "--extra-files", "my_handler.py,labels.json", "--export-path", str(export)]) == 0
    assert archive_names(export / "dup.mar") == {"my_handler.py", "labels.json", "MAR-INF/MANIFEST.json"}


def test_glob_in_extra_files(src: Path, export: Path) -> None:
    assert main(["--model-name", "g", "--version", "1", "--handler", "tensor",
                 "--extra-files", "*.json,*.txt", "--export-path", str(export)]) == 0
    assert archive_names(export / "g.mar") == {"labels.json", "requirements.txt", "MAR-INF/MANIFEST.json"}


def test_default_export_path_is_current_folder(src: Path) -> None:
    assert main(["--model-name", "here", "--version", "1", "--handler", "tensor"]) == 0
    assert (src / "here.mar").is_file()


@pytest.mark.parametrize("fmt", ["default", "no-archive"])
def test_force_replaces_existing_output(src: Path, export: Path, fmt: str) -> None:
    assert main(full_args("f", export, fmt)) == 0
    out = export / f"f{FORMATS[fmt]}"
    assert main([*full_args("f", export, fmt), "--version", "9", "--force"]) == 0
    assert manifest_of(out)["model"]["modelVersion"] == "9"
    assert os.listdir(export) == [out.name]


# -- errors: one line, non-zero, nothing written --------------------------------------------------

def assert_error(argv: list[str], export: Path, capsys: pytest.CaptureFixture, match: str,
                 before: dict[str, bytes] | None = None) -> int:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX)
    assert re.search(match, lines[0]), lines[0]
    if export.is_dir():
        now = {p.name: (p.read_bytes() if p.is_file() else b"<dir>") for p in export.iterdir()}
        assert now == (before or {}), "nothing may be written or left behind"
    return code


def base(export: Path, *extra: str) -> list[str]:
    return ["--model-name", "m", "--version", "1", "--handler", "my_handler.py",
            "--export-path", str(export), *extra]


@pytest.mark.parametrize("argv_tail, match", [
    (["--serialized-file", "missing.pt"], r"--serialized-file missing\.pt: no such file"),
    (["--model-file", "missing.py"], r"--model-file missing\.py: no such file"),
    (["--serialized-file", "assets"], "is a directory"),
    (["--extra-files", "labels.json,nope.txt"], r"--extra-files nope\.txt: no such file or directory"),
    (["-r", "missing.txt"], "--requirements-file missing.txt: no such file"),
    (["-c", "missing.yaml"], "--config-file missing.yaml: no such file"),
    (["--runtime", "LSP"], "invalid choice"),
    (["--archive-format", "rar"], "invalid choice"),
])
def test_bad_inputs(src: Path, export: Path, capsys: pytest.CaptureFixture, argv_tail: list, match: str) -> None:
    assert_error(base(export, *argv_tail), export, capsys, match)


def test_bad_model_name(src: Path, export: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--model-name", "bad/name", "--version", "1", "--handler", "tensor", "--export-path", str(export)]
    assert_error(argv, export, capsys, "invalid model name 'bad/name'")


def test_missing_handler_file(src: Path, export: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--model-name", "m", "--version", "1", "--handler", "nothere.py:fn", "--export-path", str(export)]
    assert_error(argv, export, capsys, r"--handler nothere\.py: no such file")


def test_missing_required_flags(src: Path, export: Path, capsys: pytest.CaptureFixture) -> None:
    code = assert_error(["--model-name", "m", "--handler", "tensor", "--export-path", str(export)],
                        export, capsys, "required: -v/--version")
    assert code == 2
    assert_error(["--version", "1", "--handler", "tensor", "--export-path", str(export)],
                 export, capsys, "required: --model-name")


def test_empty_version(src: Path, export: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--model-name", "m", "--version", "", "--handler", "tensor", "--export-path", str(export)]
    assert_error(argv, export, capsys, "--version must not be empty")


def test_missing_export_path(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-dir"
    assert_error(base(missing), missing, capsys, "--export-path .*no-such-dir: not an existing directory")
    assert not missing.exists()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_existing_output_without_force(src: Path, export: Path, capsys: pytest.CaptureFixture, fmt: str) -> None:
    out = export / f"m{FORMATS[fmt]}"
    if fmt == "no-archive":
        out.mkdir()
        before = {out.name: b"<dir>"}
    else:
        out.write_bytes(b"old archive")
        before = {out.name: b"old archive"}
    assert_error(base(export, "--archive-format", fmt), export, capsys,
                 "already exists; use -f/--force", before)


@pytest.mark.parametrize("yaml_text, match", [
    ("batchSize: [1, 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "must be a YAML mapping"),
])
def test_invalid_config_file(src: Path, export: Path, capsys: pytest.CaptureFixture,
                             yaml_text: str, match: str) -> None:
    (src / "bad.yaml").write_text(yaml_text)
    assert_error(base(export, "-c", "bad.yaml"), export, capsys, match)


def test_two_files_with_one_name(src: Path, export: Path, capsys: pytest.CaptureFixture) -> None:
    (src / "other").mkdir()
    (src / "other" / "labels.json").write_text("{}")
    assert_error(base(export, "--extra-files", "labels.json,other/labels.json"), export, capsys,
                 "would both be stored as 'labels.json'")


def test_extra_folder_with_a_manifest(src: Path, export: Path, capsys: pytest.CaptureFixture) -> None:
    (src / "old" / "MAR-INF").mkdir(parents=True)
    (src / "old" / "MAR-INF" / "MANIFEST.json").write_text("{}")
    assert_error(base(export, "--extra-files", "old"), export, capsys, "would overwrite the archive's own")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_failure_while_writing_leaves_nothing(src: Path, export: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    calls = []

    def broken_copy(path: str, out: object, label: str) -> None:
        calls.append(label)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        cli_copy(path, out, label)

    cli_copy = cli._copy
    monkeypatch.setattr(cli, "_copy", broken_copy)
    if fmt == "tgz":  # tar data goes through _ProgressReader, not _copy
        monkeypatch.setattr(cli, "_ProgressReader", lambda f, p: broken_copy_reader(f, calls))
    assert_error(full_args("m", export, fmt), export, capsys, "No space left on device")


def broken_copy_reader(f: io.BufferedReader, calls: list) -> object:
    calls.append("tar")

    class Reader:
        def read(self, n: int = -1) -> bytes:
            if len(calls) >= 3:
                raise OSError(28, "No space left on device")
            return f.read(n)
    return Reader()


# -- progress ---------------------------------------------------------------------------------------

class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("fmt", ["default", "tgz", "no-archive"])
def test_progress_for_large_files_on_a_terminal(src: Path, export: Path, monkeypatch: pytest.MonkeyPatch,
                                                fmt: str) -> None:
    monkeypatch.setattr(cli, "PROGRESS_MIN_BYTES", 2000)  # weights.pt is 3000 bytes
    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    assert main(full_args("p", export, fmt)) == 0
    shown = fake.getvalue()
    assert "modelserve-archiver: adding weights.pt: 100%" in shown
    assert "model.py" not in shown, "small files show no progress"


def test_no_progress_when_stderr_is_not_a_terminal(src: Path, export: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(cli, "PROGRESS_MIN_BYTES", 2000)
    assert main(full_args("p", export, "default")) == 0
    assert capsys.readouterr().err == ""


# -- entry points -----------------------------------------------------------------------------------

def test_python_dash_m_and_help(src: Path, export: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "modelserve_archiver", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--model-name", "--serialized-file", "--handler", "--extra-files", "--archive-format",
                 "--export-path", "--force", "--version", "--requirements-file", "--config-file", "--runtime"):
        assert flag in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "modelserve_archiver", "--model-name", "sub", "--version", "1",
                           "--handler", "my_handler.py", "--export-path", str(export)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (export / "sub.mar").is_file()
    proc = subprocess.run([sys.executable, "-m", "modelserve_archiver", "--model-name", "sub", "--version", "1",
                           "--handler", "my_handler.py", "--export-path", str(export)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(PREFIX)
