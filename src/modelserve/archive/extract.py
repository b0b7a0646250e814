"""Safe extraction of model archives (.mar zip, .tar.gz, plain .tar).

Archives come from clients, so every entry is checked before anything is written:
no absolute paths, no ``..``, no links that can leave the destination, no device files
or fifos, and hard caps on entry count and uncompressed bytes (declared sizes are
checked first, then real bytes are counted while writing, because headers can lie).
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from typing import IO

from .manifest import ArchiveError

_CHUNK = 1024 * 1024
_MAX_LINK_TARGET = 4096
# Errors that mean "the archive bytes are bad", as raised by zipfile/tarfile/gzip/zlib.
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, NotImplementedError, ValueError)


def _sniff(path: str) -> str:
    """Return "zip", "tgz" or "tar" from the file's magic bytes (never its extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise ArchiveError(f"cannot read archive {os.path.basename(path)}: {e.strerror or e}") from None
    if not head:
        raise ArchiveError(f"{os.path.basename(path)} is empty")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tgz"
    if head[257:262] == b"ustar":
        return "tar"
    raise ArchiveError(f"{os.path.basename(path)} is not a zip (.mar) or tar.gz archive")


def _clean_name(name: str, label: str) -> str:
    """Return the entry's safe relative path ('' for the root itself) or raise."""
    if not name or "\x00" in name:
        raise ArchiveError(f"{label}: entry with an empty or invalid name")
    if "\\" in name:
        # Legit archivers write '/'; a backslash can smuggle a Windows-style traversal.
        raise ArchiveError(f"{label}: entry {name!r} contains a backslash")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"{label}: entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{label}: entry {name!r} contains '..'")
    return "/".join(parts)


class _Writer:
    """Writes checked entries under ``root`` and enforces the byte and entry limits."""

    def __init__(self, root: str, label: str, max_bytes: int, max_files: int) -> None:
        self.root = os.path.realpath(root)
        self.label = label
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.entries = 0
        self.declared = 0
        self.written = 0
        self.regular: set[str] = set()  # regular files written, for tar hard links

    def _inside(self, path: str) -> bool:
        return os.path.commonpath([self.root, os.path.realpath(path)]) == self.root

    def count(self, name: str) -> str:
        self.entries += 1
        if self.entries > self.max_files:
            raise ArchiveError(f"{self.label} has more than {self.max_files} entries")
        return _clean_name(name, self.label)

    def declare(self, size: int) -> None:
        self.declared += max(size, 0)
        if self.declared > self.max_bytes:
            raise ArchiveError(
                f"{self.label} declares more than {self.max_bytes} bytes uncompressed"
            )

    def _parent(self, rel: str) -> str:
        target = os.path.join(self.root, rel)
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        if not self._inside(parent):
            raise ArchiveError(f"{self.label}: entry {rel!r} escapes the destination")
        if os.path.lexists(target):
            raise ArchiveError(f"{self.label}: duplicate entry {rel!r}")
        return target

    def mkdir(self, rel: str) -> None:
        if not rel:
            return
        target = os.path.join(self.root, rel)
        if os.path.lexists(target) and not os.path.isdir(target):
            raise ArchiveError(f"{self.label}: duplicate entry {rel!r}")
        os.makedirs(target, exist_ok=True)
        if not self._inside(target):
            raise ArchiveError(f"{self.label}: entry {rel!r} escapes the destination")

    def write(self, rel: str, src: IO[bytes], declared: int | None) -> None:
        if not rel:
            raise ArchiveError(f"{self.label}: file entry with an empty name")
        target = self._parent(rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        size = 0
        with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except (*_CORRUPT, OSError) as e:  # gzip signals bad data with OSError
                    raise ArchiveError(f"{self.label} is corrupt or truncated at {rel!r}: {e}") from None
                if not chunk:
                    break
                size += len(chunk)
                self.written += len(chunk)
                if declared is not None and size > declared:
                    raise ArchiveError(f"{self.label}: entry {rel!r} is larger than its declared size")
                if self.written > self.max_bytes:
                    raise ArchiveError(f"{self.label} expands to more than {self.max_bytes} bytes")
                out.write(chunk)
        self.regular.add(rel)

    def symlink(self, rel: str, link_target: str) -> None:
        # A relative target without '..' can only name something below the link's own folder,
        # so no chain of such links can ever leave the destination.
        bad = (
            not link_target
            or "\x00" in link_target
            or "\\" in link_target
            or link_target.startswith("/")
            or re.match(r"^[A-Za-z]:", link_target)
            or ".." in link_target.split("/")
        )
        if bad:
            raise ArchiveError(
                f"{self.label}: symlink {rel!r} -> {link_target!r} points outside the destination"
            )
        target = self._parent(rel)
        if not self._inside(os.path.join(os.path.dirname(target), link_target)):
            raise ArchiveError(
                f"{self.label}: symlink {rel!r} -> {link_target!r} points outside the destination"
            )
        os.symlink(link_target, target)

    def hardlink(self, rel: str, link_name: str) -> None:
        # Only links to a regular file already extracted from this archive; written as a copy.
        try:
            source = _clean_name(link_name, self.label)
        except ArchiveError:
            source = ""
        if source not in self.regular:
            raise ArchiveError(
                f"{self.label}: hard link {rel!r} -> {link_name!r} does not point to a file in the archive"
            )
        with open(os.path.join(self.root, source), "rb") as src:
            self.write(rel, src, None)


def _extract_zip(path: str, w: _Writer) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (*_CORRUPT, OSError) as e:
        raise ArchiveError(f"{w.label} is not a valid zip archive: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > w.max_files:
            raise ArchiveError(f"{w.label} has more than {w.max_files} entries")
        for info in infos:
            w.declare(info.file_size)
        for info in infos:
            rel = w.count(info.filename)
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{w.label}: entry {info.filename!r} is encrypted")
            kind = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir() or kind == stat.S_IFDIR:
                w.mkdir(rel)
                continue
            try:
                if kind == stat.S_IFLNK:
                    if info.file_size > _MAX_LINK_TARGET:
                        raise ArchiveError(f"{w.label}: symlink {info.filename!r} target is too long")
                    link_target = zf.read(info).decode("utf-8", "replace")
                    w.symlink(rel, link_target)
                elif kind in (0, stat.S_IFREG):
                    with zf.open(info) as src:
                        w.write(rel, src, info.file_size)
                else:
                    raise ArchiveError(f"{w.label}: entry {info.filename!r} is a special file")
            except _CORRUPT as e:
                raise ArchiveError(f"{w.label} is corrupt: {info.filename!r}: {e}") from None


def _extract_tar(path: str, w: _Writer, compressed: bool) -> None:
    # Stream mode reads the archive once, front to back: no seeking in a gzip stream.
    try:
        tf = tarfile.open(path, mode="r|gz" if compressed else "r|")
    except (*_CORRUPT, OSError) as e:
        raise ArchiveError(f"{w.label} is not a valid tar archive: {e}") from None
    with tf:
        members = iter(tf)
        while True:
            try:
                member = next(members)
            except StopIteration:
                break
            except (*_CORRUPT, OSError) as e:
                raise ArchiveError(f"{w.label} is corrupt or truncated: {e}") from None
            rel = w.count(member.name)
            if member.isdir():
                w.mkdir(rel)
            elif member.isreg():
                w.declare(member.size)
                src = tf.extractfile(member)
                assert src is not None  # isreg() members always have data
                w.write(rel, src, member.size)
            elif member.issym():
                w.symlink(rel, member.linkname)
            elif member.islnk():
                w.hardlink(rel, member.linkname)
            else:
                raise ArchiveError(
                    f"{w.label}: entry {member.name!r} is a device, fifo or other special file"
                )


def _clean_dest(dest_dir: str, created: bool) -> None:
    if created:
        shutil.rmtree(dest_dir, ignore_errors=True)
        return
    for name in os.listdir(dest_dir):
        full = os.path.join(dest_dir, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.unlink(full)


def safe_extract(
    archive_path: str,
    dest_dir: str,
    max_bytes: int = 8 * 1024**3,
    max_files: int = 10_000,
) -> None:
    """Extract a zip or tar(.gz) archive into ``dest_dir`` (absent or empty), or raise.

    On any error ``dest_dir`` is removed (if this call created it) or emptied, and
    nothing is ever written outside it. Raises ArchiveError for bad or unsafe archives.
    """
    label = os.path.basename(archive_path) or archive_path
    kind = _sniff(archive_path)
    created = not os.path.lexists(dest_dir)
    if created:
        os.makedirs(dest_dir)
    elif not os.path.isdir(dest_dir) or os.listdir(dest_dir):
        raise FileExistsError(f"extraction target {dest_dir} exists and is not an empty directory")
    writer = _Writer(dest_dir, label, max_bytes, max_files)
    try:
        if kind == "zip":
            _extract_zip(archive_path, writer)
        else:
            _extract_tar(archive_path, writer, compressed=(kind == "tgz"))
    except BaseException:
        _clean_dest(dest_dir, created)
        raise
