"""modelserve-archiver: build model archives in torch-model-archiver 0.12's layout.

Same flags and outputs as torch-model-archiver, so archives load in TorchServe and in
modelserve alike. Every failure is one ``modelserve-archiver: error: ...`` line on
stderr and leaves nothing behind: outputs are written to a hidden temp name in the
export folder and renamed into place only when complete.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zipfile
from typing import IO, NoReturn

from modelserve.archive import (
    MANIFEST_PATH,
    RUNTIMES,
    ArchiveError,
    build_manifest,
    manifest_to_json,
    parse_model_config,
    validate_model_name,
)

PROG = "modelserve-archiver"
FORMATS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
# Handler names the server resolves itself; never looked up as files.
BUILTIN_HANDLERS = frozenset(
    {"base_handler", "image_classifier", "image_segmenter", "object_detector", "text_classifier", "tensor"}
)
# torch-model-archiver drops these folders (and any folder starting with '.') from archives.
SKIPPED_DIRS = frozenset({"__pycache__", "__MACOSX"})
PROGRESS_MIN_BYTES = 50 * 1024 * 1024
_CHUNK = 1024 * 1024


class CliError(Exception):
    """A user error: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage block, like every other error we print.
        raise CliError(f"{message} (see --help)", 2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Package a PyTorch model into a TorchServe-compatible archive.")
    p.add_argument("--model-name", required=True, help="model name; output is <name>.mar (or .tar.gz / <name>/)")
    p.add_argument("--serialized-file", help="weights file: state_dict .pt/.pth, TorchScript, .onnx ...")
    p.add_argument("--model-file", help="python file defining the model class (eager mode)")
    p.add_argument(
        "--handler",
        required=True,
        help="handler file (x.py or x.py:function) or built-in handler name (e.g. image_classifier)",
    )
    p.add_argument("--extra-files", help="comma-separated files, folders or globs to add; folder contents go to the root")
    p.add_argument("--runtime", default="python", choices=list(RUNTIMES), help="handler runtime (default: python)")
    p.add_argument("--export-path", default=None, help="existing folder to write the output to (default: current folder)")
    p.add_argument("--archive-format", default="default", choices=list(FORMATS), help="output format (default: default)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("-v", "--version", required=True, help="model version stored in the manifest")
    p.add_argument("-r", "--requirements-file", help="requirements.txt with the model's Python dependencies")
    p.add_argument("-c", "--config-file", help="model-config.yaml (must be a YAML mapping)")
    return p


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


def _require_file(path: str, flag: str) -> str:
    if os.path.isdir(path):
        raise CliError(f"{flag} {path}: is a directory, expected a file")
    if not os.path.isfile(path):
        raise CliError(f"{flag} {path}: no such file")
    return path


class _Entries:
    """Archive path -> source file, refusing two different files under one name."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, arcname: str, src: str) -> None:
        if arcname == MANIFEST_PATH:
            raise CliError(f"{src} would overwrite the archive's own {MANIFEST_PATH}")
        old = self.items.get(arcname)
        if old is not None:
            if os.path.samefile(old, src):
                return  # the same file given twice (e.g. handler also in --extra-files)
            raise CliError(f"{old} and {src} would both be stored as {arcname!r}")
        self.items[arcname] = src

    def add_tree(self, folder: str) -> None:
        # Like torch-model-archiver: the folder's contents go to the archive root,
        # sub-folders are kept, hidden folders and __pycache__ are left out.
        seen: set[str] = set()
        for root, dirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
            for name in sorted(files):
                src = os.path.join(root, name)
                if not os.path.isfile(src):
                    raise CliError(f"--extra-files {src}: not a regular file")
                self.add(os.path.relpath(src, folder).replace(os.sep, "/"), src)


def _resolve_handler(handler: str, entries: _Entries) -> str:
    """Copy the handler file if it is one; return the manifest's handler string."""
    if os.path.isfile(handler):
        entries.add(os.path.basename(handler), handler)
        return os.path.basename(handler)
    module, sep, func = handler.partition(":")
    if not module or (sep and not func):
        raise CliError(f"--handler {handler!r}: expected file.py, file.py:function or a handler name")
    if module.endswith(".py") or "/" in module or os.sep in module:
        src = module if module.endswith(".py") else module + ".py"
        entries.add(os.path.basename(src), _require_file(src, "--handler"))
        return os.path.basename(module) + sep + func
    if module in BUILTIN_HANDLERS and not sep:
        return handler
    if os.path.isfile(module + ".py"):
        # torch-model-archiver reads "name" / "name:function" as name.py when it exists.
        entries.add(module + ".py", module + ".py")
        return handler
    _warn(f"handler {handler!r} is not a file here; stored as a handler name for the server to resolve")
    return handler


def _add_extra_files(spec: str, entries: _Entries) -> None:
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item))
            if not matches:
                _warn(f"--extra-files pattern {item!r} matched no file")
        elif os.path.exists(item):
            matches = [item]
        else:
            raise CliError(f"--extra-files {item}: no such file or directory")
        for path in matches:
            if os.path.isdir(path):
                entries.add_tree(path)
            elif os.path.isfile(path):
                entries.add(os.path.basename(path), path)
            else:
                raise CliError(f"--extra-files {path}: not a regular file or directory")


class _Progress:
    """A one-line percentage on stderr for big files, only when stderr is a terminal."""

    def __init__(self, label: str, total: int, stream: IO[str]) -> None:
        isatty = getattr(stream, "isatty", lambda: False)
        self.enabled = total >= PROGRESS_MIN_BYTES and isatty()
        self.label, self.total, self.stream = label, max(total, 1), stream
        self.done = 0
        self.shown = -1

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = min(100, self.done * 100 // self.total)
        if pct != self.shown:
            self.shown = pct
            self.stream.write(f"\r{PROG}: adding {self.label}: {pct:3d}%")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class _ProgressReader:
    """File wrapper that reports bytes read (tarfile.addfile pulls data through read())."""

    def __init__(self, f: IO[bytes], progress: _Progress) -> None:
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress.update(len(data))
        return data


def _copy(src: str, out: IO[bytes], label: str) -> None:
    progress = _Progress(label, os.path.getsize(src), sys.stderr)
    with open(src, "rb") as f:
        while chunk := f.read(_CHUNK):
            out.write(chunk)
            progress.update(len(chunk))
    progress.finish()


def _file_mode(src: str) -> int:
    return 0o755 if os.stat(src).st_mode & stat.S_IXUSR else 0o644


def _write_zip(tmp: str, entries: dict[str, str], manifest: str, stored: bool) -> None:
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(tmp, "w", method, strict_timestamps=False) as zf:
        for arcname, src in entries.items():
            info = zipfile.ZipInfo.from_file(src, arcname, strict_timestamps=False)
            info.compress_type = method
            with zf.open(info, "w") as out:
                _copy(src, out, arcname)
        zf.writestr(MANIFEST_PATH, manifest)  # last, as torch-model-archiver does


def _write_tgz(tmp: str, name: str, entries: dict[str, str], manifest: str) -> None:
    # torch-model-archiver puts every member under a top folder named after the model.
    with tarfile.open(tmp, "w:gz") as tf:
        for arcname, src in entries.items():
            st = os.stat(src)
            info = tarfile.TarInfo(f"{name}/{arcname}")
            info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), _file_mode(src)
            progress = _Progress(arcname, st.st_size, sys.stderr)
            with open(src, "rb") as f:
                tf.addfile(info, _ProgressReader(f, progress))  # type: ignore[arg-type]
            progress.finish()
        data = manifest.encode("utf-8")
        info = tarfile.TarInfo(f"{name}/{MANIFEST_PATH}")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tf.addfile(info, _BytesReader(data))  # type: ignore[arg-type]


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def _write_dir(tmp: str, entries: dict[str, str], manifest: str) -> None:
    for arcname, src in entries.items():
        dst = os.path.join(tmp, *arcname.split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as out:
            _copy(src, out, arcname)
        os.chmod(dst, _file_mode(src))
    os.makedirs(os.path.join(tmp, "MAR-INF"), exist_ok=True)
    with open(os.path.join(tmp, *MANIFEST_PATH.split("/")), "w", encoding="utf-8") as f:
        f.write(manifest)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _install(tmp: str, out: str, force: bool) -> None:
    """Move the finished temp output to its final name, replacing an old one if forced."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if not force:
        raise CliError(f"{out} already exists; use -f/--force to overwrite it")
    if os.path.isfile(tmp) and os.path.isfile(out) and not os.path.islink(out):
        os.replace(tmp, out)  # atomic file swap
        return
    # A folder cannot be replaced atomically: move the old one aside, then delete it.
    aside = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=".old-")
    moved = os.path.join(aside, "old")
    os.rename(out, moved)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(moved, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _run(args: argparse.Namespace) -> int:
    validate_model_name(args.model_name)
    if not args.version:
        raise CliError("--version must not be empty")
    export = args.export_path if args.export_path is not None else os.getcwd()
    if not os.path.isdir(export):
        raise CliError(f"--export-path {export}: not an existing directory")
    name = args.model_name
    out = os.path.join(export, name + FORMATS[args.archive_format])
    if os.path.lexists(out) and not args.force:
        raise CliError(f"{out} already exists; use -f/--force to overwrite it")

    entries = _Entries()
    if args.model_file:
        entries.add(os.path.basename(args.model_file), _require_file(args.model_file, "--model-file"))
    if args.serialized_file:
        entries.add(os.path.basename(args.serialized_file), _require_file(args.serialized_file, "--serialized-file"))
    handler = _resolve_handler(args.handler, entries)
    if args.extra_files:
        _add_extra_files(args.extra_files, entries)
    if args.requirements_file:
        src = _require_file(args.requirements_file, "--requirements-file")
        entries.add(os.path.basename(src), src)
    if args.config_file:
        src = _require_file(args.config_file, "--config-file")
        with open(src, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CliError(f"--config-file {src}: not UTF-8 text") from None
        parse_model_config(text, os.path.basename(src))  # fail now, not at serve time
        entries.add(os.path.basename(src), src)

    manifest = manifest_to_json(
        build_manifest(
            name,
            args.version,
            serialized_file=args.serialized_file,
            handler=handler,
            model_file=args.model_file,
            requirements_file=args.requirements_file,
            config_file=args.config_file,
            runtime=args.runtime,
        )
    )

    mask = _umask()
    if args.archive_format == "no-archive":
        tmp = tempfile.mkdtemp(dir=export, prefix=f".{name}.", suffix=".part")
        os.chmod(tmp, 0o777 & ~mask)
    else:
        fd, tmp = tempfile.mkstemp(dir=export, prefix=f".{name}.", suffix=".part")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 would make the archive private
    try:
        if args.archive_format == "no-archive":
            _write_dir(tmp, entries.items, manifest)
        elif args.archive_format == "tgz":
            _write_tgz(tmp, name, entries.items, manifest)
        else:
            _write_zip(tmp, entries.items, manifest, stored=args.archive_format == "zip-store")
        _install(tmp, out, args.force)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the archiver; returns the exit status (0 ok, 1 bad input, 2 bad usage)."""
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except CliError as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return e.code
    except ArchiveError as e:
        print(f"{PROG}: error: {_one_line(e.message)}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: error: {_one_line(where + (e.strerror or str(e)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
