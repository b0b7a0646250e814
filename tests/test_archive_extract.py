"""modelserve.archive: manifest rules, safe extraction of hostile archives, open_archive."""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelserve.archive import (
    MODEL_NAME_RE,
    ArchiveError,
    LoadedArchive,
    build_manifest,
    open_archive,
    read_manifest,
    safe_extract,
    validate_model_name,
)
from modelserve.errors import BadRequestError

MANIFEST = {
    "createdOn": "01/02/2024 10:00:00",
    "runtime": "python",
    "model": {"modelName": "m", "handler": "h.py", "modelVersion": "3.0"},
    "archiverVersion": "0.12.0",
}


# -- helpers ----------------------------------------------------------------------------------

def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def make_zip(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tar_add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    if info.type != tarfile.REGTYPE:
        info.size = 0
    tf.addfile(info, io.BytesIO(data) if info.size else None)


def make_tgz(path: Path, build, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        build(tf)
    return path


def good_files(manifest: dict | None = None) -> dict[str, bytes]:
    return {
        "h.py": b"def handle(d, c):\n    return d\n",
        "MAR-INF/MANIFEST.json": json.dumps(manifest or MANIFEST).encode(),
    }


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A folder whose only child may be the destination: anything else is an escape."""
    root = tmp_path / "box"
    root.mkdir()
    return root


def assert_refused(archive: Path, box: Path, match: str, **limits: int) -> None:
    before_tmp = snapshot(archive.parent)
    dest = box / "dest"
    with pytest.raises(ArchiveError, match=match):
        safe_extract(str(archive), str(dest), **limits)
    assert not dest.exists(), "destination must be removed after a failed extraction"
    assert snapshot(box) == set(), "nothing may be written next to the destination"
    assert snapshot(archive.parent) == before_tmp


# -- names and manifests ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet-18", "a", "Model_v2.1", "9lives"])
def test_valid_model_names(name: str) -> None:
    validate_model_name(name)
    assert MODEL_NAME_RE.fullmatch(name)


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a b", "a/b", "ok\n", "é", "a:b"])
def test_invalid_model_names(name: str) -> None:
    with pytest.raises(ArchiveError, match="invalid model name"):
        validate_model_name(name)


def test_archive_error_is_a_400_bad_request() -> None:
    err = ArchiveError("bad archive")
    assert isinstance(err, BadRequestError)
    assert err.status == 400
    assert err.to_dict() == {"code": 400, "type": "InvalidModelException", "message": "bad archive"}


def test_build_manifest_omits_files_not_given() -> None:
    m = build_manifest("m", "1.0", handler="image_classifier")
    assert list(m) == ["createdOn", "runtime", "model", "archiverVersion"]
    assert m["model"] == {"modelName": "m", "handler": "image_classifier", "modelVersion": "1.0"}
    assert m["runtime"] == "python"


def test_build_manifest_stores_base_names_in_archiver_order() -> None:
    m = build_manifest("m", "2", serialized_file="/a/w.pt", handler="/b/h.py:fn", model_file="c/model.py",
                       requirements_file="r/req.txt", config_file="/x/model-config.yaml")
    assert list(m["model"].items()) == [
        ("modelName", "m"), ("serializedFile", "w.pt"), ("handler", "h.py:fn"), ("modelFile", "model.py"),
        ("modelVersion", "2"), ("requirementsFile", "req.txt"), ("configFile", "model-config.yaml"),
    ]


@pytest.mark.parametrize("kwargs, match", [
    ({"model_name": "bad name", "model_version": "1", "handler": "h"}, "invalid model name"),
    ({"model_name": "m", "model_version": "", "handler": "h"}, "version"),
    ({"model_name": "m", "model_version": "1"}, "handler"),
    ({"model_name": "m", "model_version": "1", "handler": "h", "runtime": "LSP"}, "runtime"),
])
def test_build_manifest_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ArchiveError, match=match):
        build_manifest(**kwargs)


def write_model_dir(folder: Path, manifest: object, files: dict[str, bytes] | None = None) -> Path:
    (folder / "MAR-INF").mkdir(parents=True)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / "MAR-INF" / "MANIFEST.json").write_text(text)
    for name, data in (files if files is not None else {"h.py": b""}).items():
        (folder / name).write_bytes(data)
    return folder


def test_read_manifest_defaults_version_and_runtime(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "m", {"model": {"modelName": "m", "handler": "h.py"}})
    m = read_manifest(str(d))
    assert m["model"]["modelVersion"] == "1.0"
    assert m["runtime"] == "python"


def test_read_manifest_turns_numeric_version_into_text(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "m", {"model": {"modelName": "m", "handler": "h.py", "modelVersion": 2}})
    assert read_manifest(str(d))["model"]["modelVersion"] == "2"


@pytest.mark.parametrize("manifest, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ({"runtime": "python"}, "no 'model' object"),
    ({"model": {"handler": "h.py"}}, "modelName"),
    ({"model": {"modelName": "m"}}, "model.handler"),
    ({"model": {"modelName": "bad name", "handler": "h.py"}}, "invalid model name"),
    ({"model": {"modelName": "m", "handler": "h.py", "serializedFile": "w.pt"}}, "serializedFile 'w.pt'"),
    ({"model": {"modelName": "m", "handler": "h.py", "configFile": "../x.yaml"}}, "outside"),
    ({"model": {"modelName": "m", "handler": "h.py", "modelFile": "/etc/passwd"}}, "outside"),
    ({"model": {"modelName": "m", "handler": "missing.py:fn"}}, "handler 'missing.py'"),
])
def test_read_manifest_rejects(tmp_path: Path, manifest: object, match: str) -> None:
    d = write_model_dir(tmp_path / "m", manifest)
    with pytest.raises(ArchiveError, match=match):
        read_manifest(str(d))


def test_read_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="has no MAR-INF/MANIFEST.json"):
        read_manifest(str(tmp_path))


# -- safe_extract: what must work ---------------------------------------------------------------

def test_extracts_zip_detected_by_magic_not_extension(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "looks-like.tar.gz", {"a/b.txt": b"hello", "c.bin": b"\x00" * 10})
    dest = tmp_path / "out"
    safe_extract(str(archive), str(dest))
    assert (dest / "a" / "b.txt").read_bytes() == b"hello"
    assert (dest / "c.bin").read_bytes() == b"\x00" * 10


def test_extracts_plain_and_gzipped_tar(tmp_path: Path) -> None:
    for mode, name in (("w:gz", "x.mar"), ("w", "x.tar")):
        archive = make_tgz(tmp_path / name, lambda tf: (tar_add(tf, "./d", type=tarfile.DIRTYPE),
                                                         tar_add(tf, "./d/f.txt", b"data")), mode)
        dest = tmp_path / f"out-{name}"
        safe_extract(str(archive), str(dest))
        assert (dest / "d" / "f.txt").read_bytes() == b"data"


def test_internal_symlink_and_hardlink_are_kept_inside(tmp_path: Path) -> None:
    def build(tf: tarfile.TarFile) -> None:
        tar_add(tf, "sub/real.txt", b"payload")
        tar_add(tf, "sub/alias.txt", type=tarfile.SYMTYPE, linkname="real.txt")
        tar_add(tf, "copy.txt", type=tarfile.LNKTYPE, linkname="sub/real.txt")
    dest = tmp_path / "out"
    safe_extract(str(make_tgz(tmp_path / "a.tgz", build)), str(dest))
    assert os.readlink(dest / "sub" / "alias.txt") == "real.txt"
    assert (dest / "sub" / "alias.txt").read_bytes() == b"payload"
    # The hard link becomes an independent copy, never a real link.
    assert (dest / "copy.txt").read_bytes() == b"payload"
    assert os.stat(dest / "copy.txt").st_nlink == 1


def test_failure_empties_a_preexisting_destination_but_keeps_it(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.mar", {"ok.txt": b"1", "../evil": b"2"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError):
        safe_extract(str(archive), str(dest))
    assert dest.is_dir() and list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_refuses_nonempty_destination(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.mar", {"ok.txt": b"1"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        safe_extract(str(archive), str(dest))
    assert (dest / "keep").read_text() == "x"


# -- safe_extract: hostile archives ---------------------------------------------------------------

def test_zip_slip(tmp_path: Path, box: Path) -> None:
    archive = make_zip(tmp_path / "slip.mar", {"ok.txt": b"1", "../evil": b"pwned", "a/../../evil2": b"x"})
    assert_refused(archive, box, r"contains '\.\.'")
    assert not (tmp_path / "evil").exists()


def test_tar_slip(tmp_path: Path, box: Path) -> None:
    archive = make_tgz(tmp_path / "slip.tgz", lambda tf: tar_add(tf, "../evil", b"pwned"))
    assert_refused(archive, box, r"contains '\.\.'")


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_absolute_path(tmp_path: Path, box: Path, kind: str) -> None:
    target = tmp_path / "abs-evil"
    if kind == "zip":
        archive = tmp_path / "abs.mar"
        with zipfile.ZipFile(archive, "w") as zf:
            info = zipfile.ZipInfo("x")
            info.filename = str(target)  # zipfile strips a leading '/' unless set afterwards
            zf.writestr(info, b"pwned")
    else:
        archive = make_tgz(tmp_path / "abs.tgz", lambda tf: tar_add(tf, str(target), b"pwned"))
    assert_refused(archive, box, "absolute path")
    assert not target.exists()


def test_backslash_names_are_refused(tmp_path: Path, box: Path) -> None:
    archive = make_zip(tmp_path / "bs.mar", {"..\\evil": b"x"})
    assert_refused(archive, box, "backslash")


@pytest.mark.parametrize("link", ["/etc", "../outside", "sub/../../x", "../box"])
def test_tar_symlink_pointing_outside(tmp_path: Path, box: Path, link: str) -> None:
    def build(tf: tarfile.TarFile) -> None:
        tar_add(tf, "escape", type=tarfile.SYMTYPE, linkname=link)
        tar_add(tf, "escape/evil", b"pwned")  # would write through the link
    assert_refused(make_tgz(tmp_path / "sym.tgz", build), box, "points outside")


def test_zip_symlink_pointing_outside(tmp_path: Path, box: Path) -> None:
    archive = tmp_path / "sym.mar"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("escape")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../etc")
        zf.writestr("escape/evil", b"pwned")
    assert_refused(archive, box, "points outside")


@pytest.mark.parametrize("link", ["/etc/passwd", "../outside.txt", "not-in-archive.txt"])
def test_tar_hardlink_outside(tmp_path: Path, box: Path, link: str) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    archive = make_tgz(tmp_path / "hard.tgz",
                       lambda tf: tar_add(tf, "h", type=tarfile.LNKTYPE, linkname=link))
    assert_refused(archive, box, "hard link")
    assert (tmp_path / "outside.txt").read_text() == "secret"


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_device_files_and_fifos(tmp_path: Path, box: Path, kind: bytes) -> None:
    archive = make_tgz(tmp_path / "dev.tgz", lambda tf: tar_add(tf, "dev", type=kind, devmajor=1, devminor=3))
    assert_refused(archive, box, "special file")


def test_zip_special_file_mode(tmp_path: Path, box: Path) -> None:
    archive = tmp_path / "fifo.mar"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("pipe")
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, b"")
    assert_refused(archive, box, "special file")


def test_zip_bomb_declared_size(tmp_path: Path, box: Path) -> None:
    # 1 MB of zeros deflates to about 1 KB: small on disk, large when extracted.
    archive = make_zip(tmp_path / "bomb.mar", {"zeros.bin": b"\0" * 1_000_000})
    assert archive.stat().st_size < 10_000
    assert_refused(archive, box, "declares more than 100000 bytes", max_bytes=100_000)


def test_tar_declared_size_over_limit(tmp_path: Path, box: Path) -> None:
    archive = make_tgz(tmp_path / "big.tgz", lambda tf: tar_add(tf, "big.bin", b"\0" * 50_000))
    assert_refused(archive, box, "declares more than", max_bytes=10_000)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_that_lies_about_its_size(tmp_path: Path, box: Path, method: int) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("big.bin", b"A" * 200_000)
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 22, 10)  # local header: uncompressed size
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)  # central directory: uncompressed size
    archive = tmp_path / "liar.mar"
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).infolist()[0].file_size == 10
    # Declared total (10) passes the limit; reading more than declared must still fail.
    assert_refused(archive, box, "corrupt|larger than its declared size", max_bytes=1_000)


def test_actual_bytes_are_counted(tmp_path: Path, box: Path) -> None:
    # Hard links declare size 0 but copy real bytes: 600 declared, 1200 written.
    def build(tf: tarfile.TarFile) -> None:
        tar_add(tf, "a.bin", b"x" * 600)
        tar_add(tf, "b.bin", type=tarfile.LNKTYPE, linkname="a.bin")
    assert_refused(make_tgz(tmp_path / "links.tgz", build), box, "expands to more than 1000 bytes", max_bytes=1000)


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_too_many_files(tmp_path: Path, box: Path, kind: str) -> None:
    names = {f"f{i}.txt": b"x" for i in range(5)}
    if kind == "zip":
        archive = make_zip(tmp_path / "many.mar", names)
    else:
        archive = make_tgz(tmp_path / "many.tgz", lambda tf: [tar_add(tf, n, d) for n, d in names.items()])
    assert_refused(archive, box, "more than 3 entries", max_files=3)


def test_duplicate_zip_entries(tmp_path: Path, box: Path) -> None:
    archive = tmp_path / "dup.mar"
    with pytest.warns(UserWarning):
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("a.txt", b"1")
            zf.writestr("a.txt", b"2")
    assert_refused(archive, box, "duplicate entry")


def test_corrupt_zip(tmp_path: Path, box: Path) -> None:
    archive = tmp_path / "bad.mar"
    archive.write_bytes(b"PK\x03\x04" + os.urandom(200))
    assert_refused(archive, box, "not a valid zip archive")


def test_zip_with_damaged_data(tmp_path: Path, box: Path) -> None:
    archive = make_zip(tmp_path / "dmg.mar", {"a.bin": os.urandom(4000)}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    data[100:110] = b"\xff" * 10  # inside a.bin's data: the CRC no longer matches
    archive.write_bytes(bytes(data))
    assert_refused(archive, box, "corrupt")


def test_truncated_tgz(tmp_path: Path, box: Path) -> None:
    full = make_tgz(tmp_path / "full.tgz", lambda tf: (tar_add(tf, "a.bin", os.urandom(100_000)),
                                                       tar_add(tf, "b.bin", os.urandom(100_000))))
    archive = tmp_path / "cut.tgz"
    archive.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    assert_refused(archive, box, "corrupt or truncated")


def test_gzip_that_is_not_a_tar(tmp_path: Path, box: Path) -> None:
    import gzip
    archive = tmp_path / "notar.tar.gz"
    archive.write_bytes(gzip.compress(b"just some text, not a tar header" * 40))
    assert_refused(archive, box, "tar")


def test_unknown_format(tmp_path: Path, box: Path) -> None:
    archive = tmp_path / "model.mar"
    archive.write_text("definitely not an archive")
    with pytest.raises(ArchiveError, match="not a zip"):
        safe_extract(str(archive), str(box / "dest"))
    assert snapshot(box) == set()


# -- open_archive ---------------------------------------------------------------------------------

def test_open_zip_archive(tmp_path: Path) -> None:
    files = good_files()
    files["model-config.yaml"] = b"batchSize: 4\nmaxBatchDelay: 20\n"
    manifest = json.loads(files["MAR-INF/MANIFEST.json"])
    manifest["model"]["configFile"] = "model-config.yaml"
    files["MAR-INF/MANIFEST.json"] = json.dumps(manifest).encode()
    work = tmp_path / "work"
    loaded = open_archive(str(make_zip(tmp_path / "m.mar", files)), str(work))
    assert isinstance(loaded, LoadedArchive)
    assert Path(loaded.model_dir).parent == work
    assert Path(loaded.model_dir).name.startswith("m-")
    assert loaded.extracted is True
    assert loaded.source == str(tmp_path / "m.mar")
    assert loaded.manifest["model"]["modelVersion"] == "3.0"
    assert loaded.model_config == {"batchSize": 4, "maxBatchDelay": 20}
    assert (Path(loaded.model_dir) / "h.py").exists()


def test_open_tgz_with_top_folder_hoists_it(tmp_path: Path) -> None:
    def build(tf: tarfile.TarFile) -> None:
        for name, data in good_files().items():
            tar_add(tf, f"m/{name}", data)
        tar_add(tf, "m/m/nested.txt", b"same name as the top folder")
    loaded = open_archive(str(make_tgz(tmp_path / "m.tar.gz", build)), str(tmp_path / "work"))
    model_dir = Path(loaded.model_dir)
    assert model_dir.parent == tmp_path / "work"
    assert sorted(os.listdir(model_dir)) == ["MAR-INF", "h.py", "m"]
    assert (model_dir / "m" / "nested.txt").read_bytes() == b"same name as the top folder"


def test_open_folder_in_place(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "m", MANIFEST)
    work = tmp_path / "work"
    loaded = open_archive(str(d), str(work))
    assert loaded.model_dir == str(d)
    assert loaded.extracted is False
    assert loaded.model_config == {}
    assert not work.exists() or list(work.iterdir()) == []


@pytest.mark.parametrize("files, match", [
    ({"h.py": b""}, "has no MAR-INF/MANIFEST.json"),
    ({"h.py": b"", "MAR-INF/MANIFEST.json": b"{oops"}, "not valid JSON"),
    ({"h.py": b"", "c.yaml": b"a: [1, 2\n",
      "MAR-INF/MANIFEST.json": json.dumps({"model": {"modelName": "m", "handler": "h.py",
                                                     "configFile": "c.yaml"}}).encode()}, "not valid YAML"),
    ({"h.py": b"", "c.yaml": b"- 1\n- 2\n",
      "MAR-INF/MANIFEST.json": json.dumps({"model": {"modelName": "m", "handler": "h.py",
                                                     "configFile": "c.yaml"}}).encode()}, "YAML mapping"),
])
def test_open_invalid_archive_cleans_up(tmp_path: Path, files: dict, match: str) -> None:
    work = tmp_path / "work"
    with pytest.raises(ArchiveError, match=match):
        open_archive(str(make_zip(tmp_path / "m.mar", files)), str(work))
    assert list(work.iterdir()) == [], "the extraction folder must be removed"


def test_open_folder_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ArchiveError, match="m has no MAR-INF/MANIFEST.json"):
        open_archive(str(tmp_path / "m"), str(tmp_path / "work"))


def test_open_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not an archive file or folder"):
        open_archive(str(tmp_path / "nope.mar"), str(tmp_path / "work"))


def test_open_unsafe_archive_cleans_up(tmp_path: Path) -> None:
    files = good_files()
    files["../../evil"] = b"x"
    work = tmp_path / "work"
    with pytest.raises(ArchiveError, match=r"'\.\.'"):
        open_archive(str(make_zip(tmp_path / "m.mar", files)), str(work))
    assert list(work.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_archive_module_does_not_import_torch_or_aiohttp() -> None:
    code = ("import sys, modelserve.archive; "
            "print(sorted(m for m in ('torch', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
