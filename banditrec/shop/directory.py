"""The shop directory: versioned builds, each self-describing and checksummed, and a pointer
replaced atomically, so a reader sees the old build or the new one, never half of one.

Details: docs/data-formats.md, "The shop directory (`shop/directory.py`)".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from ..policies.snapshot import atomic_write

FORMAT = "banditrec.shop/1"
POINTER = "CURRENT.json"
BUILDS = "builds"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShopDirError(ValidationError):
    """A shop directory (or one of its builds) is missing, damaged or of another format."""


@dataclass(frozen=True)
class Pointer:
    build: str
    manifest_sha256: str


def read_pointer(directory) -> Pointer:
    """The current build's id and manifest checksum; raises :class:`ShopDirError` when the
    directory has no build or the pointer is damaged."""
    path = Path(directory) / POINTER
    if not Path(directory).is_dir():
        raise ShopDirError(f"{directory} is not a shop directory (build one with `banditrec build`)", "shop")
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ShopDirError(
            f"{directory} has no {POINTER}: no build was published there (`banditrec build`)", "shop"
        ) from None
    except (OSError, ValueError) as exc:
        raise ShopDirError(f"{path} is damaged: {exc}", "shop") from None
    if (
        not isinstance(raw, dict)
        or raw.get("format") != FORMAT
        or not isinstance(raw.get("build"), str)
        or not isinstance(raw.get("manifest_sha256"), str)
        or len(raw["manifest_sha256"]) != 64
    ):
        raise ShopDirError(f"{path} is not a {FORMAT} pointer", "shop")
    if "/" in raw["build"] or raw["build"].startswith("."):
        raise ShopDirError(f"{path} names an invalid build {raw['build']!r}", "shop")
    return Pointer(raw["build"], raw["manifest_sha256"])


def pointer_signature(directory) -> tuple | None:
    """A cheap signature of the pointer file (inode, size, mtime) to notice a new build; None
    when there is none."""
    try:
        st = os.stat(Path(directory) / POINTER)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class BuildFiles:
    """One build's directory, verified: ``manifest`` (dict) and checked access to its files."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self._checked: set[str] = set()

    @classmethod
    def open(cls, directory, pointer: Pointer | None = None, *, build: str | None = None) -> BuildFiles:
        """The build the pointer names (its manifest checked against the pointer's checksum), or
        ``build`` by name (a fallback when the pointer is unusable: its manifest is only parsed,
        each file is still checked against it)."""
        if build is None:
            pointer = pointer or read_pointer(directory)
        else:
            pointer = Pointer(build, "")
        root = Path(directory) / BUILDS / pointer.build
        path = root / "manifest.json"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ShopDirError(
                f"build {pointer.build} of {directory} has no readable manifest: {exc}", "shop"
            ) from None
        if build is None and hashlib.sha256(data).hexdigest() != pointer.manifest_sha256:
            raise ShopDirError(
                f"build {pointer.build}'s manifest does not match the pointer's checksum (damaged or replaced)", "shop"
            )
        try:
            manifest = json.loads(data)
        except ValueError as exc:
            raise ShopDirError(f"build {pointer.build}'s manifest is not JSON: {exc}", "shop") from None
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != FORMAT
            or manifest.get("build") != pointer.build
            or not isinstance(manifest.get("files"), dict)
        ):
            raise ShopDirError(f"build {pointer.build}'s manifest is not a {FORMAT} manifest", "shop")
        return cls(root, manifest)

    @property
    def build(self) -> str:
        return self.manifest["build"]

    def path(self, name: str) -> Path:
        """The path of file ``name`` after checking its sha256 against the manifest (once)."""
        want = self.manifest["files"].get(name)
        if not isinstance(want, str):
            raise ShopDirError(f"build {self.build} has no file {name!r}", "shop")
        p = self.root / name
        if name not in self._checked:
            try:
                got = sha256_file(p)
            except OSError as exc:
                raise ShopDirError(f"build {self.build}: cannot read {name}: {exc.strerror}", "shop") from None
            if got != want:
                raise ShopDirError(f"build {self.build}: {name} does not match its checksum (damaged)", "shop")
            self._checked.add(name)
        return p

    def array(self, name: str, *, mmap: bool = True) -> np.ndarray:
        try:
            return np.load(self.path(f"arrays/{name}.npy"), mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as exc:
            raise ShopDirError(f"build {self.build}: arrays/{name}.npy cannot be read: {exc}", "shop") from None

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Every array whose name starts with ``prefix.``, keyed by the rest of the name."""
        out = {}
        for name in self.manifest["files"]:
            if name.startswith(f"arrays/{prefix}.") and name.endswith(".npy"):
                key = name[len(f"arrays/{prefix}.") : -4]
                out[key] = self.array(f"{prefix}.{key}")
        return out

    def table(self, name: str):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(self.path(name))
        except OSError as exc:
            raise ShopDirError(f"build {self.build}: {name} cannot be read: {exc}", "shop") from None


class BuildWriter:
    """Writes one build into a temporary directory; :meth:`publish` moves it in and switches
    the pointer."""

    def __init__(self, directory, build: str):
        self.directory = Path(directory)
        self.build = build
        self.tmp = self.directory / BUILDS / f".tmp-{build}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        (self.tmp / "arrays").mkdir(parents=True)
        self.files: dict[str, str] = {}

    def array(self, name: str, arr) -> None:
        arr = np.ascontiguousarray(arr)
        if arr.dtype == object:
            raise ValidationError(f"array {name} has dtype object; store strings in a table", name)
        path = self.tmp / "arrays" / f"{name}.npy"
        np.save(path, arr, allow_pickle=False)
        self.files[f"arrays/{name}.npy"] = sha256_file(path)

    def arrays(self, prefix: str, arrays: dict) -> None:
        for key, arr in arrays.items():
            self.array(f"{prefix}.{key}", arr)

    def table(self, name: str, table) -> None:
        import pyarrow.parquet as pq

        path = self.tmp / name
        pq.write_table(table, path)
        self.files[name] = sha256_file(path)

    def publish(self, manifest: dict, *, keep: int) -> str:
        """Write the manifest, fsync, move the build in, switch the pointer; drop builds beyond
        the newest ``keep`` (never the one published). Returns the manifest's sha256."""
        manifest = {**manifest, "format": FORMAT, "build": self.build, "files": dict(sorted(self.files.items()))}
        data = json.dumps(manifest, indent=1, default=_plain).encode()
        (self.tmp / "manifest.json").write_bytes(data)
        for p in [*self.tmp.rglob("*")]:
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        final = self.directory / BUILDS / self.build
        os.rename(self.tmp, final)
        _fsync_dir(final.parent)
        digest = hashlib.sha256(data).hexdigest()
        pointer = {"format": FORMAT, "build": self.build, "manifest_sha256": digest}
        atomic_write(self.directory / POINTER, (json.dumps(pointer) + "\n").encode())
        _prune(self.directory / BUILDS, keep, self.build)
        return digest

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _plain(value):
    """numpy scalars and arrays in a manifest, as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(builds: Path, keep: int, current: str) -> None:
    done = sorted(p.name for p in builds.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in done[: max(len(done) - keep, 0)]:
        if name != current:
            shutil.rmtree(builds / name, ignore_errors=True)


def list_builds(directory) -> list[str]:
    root = Path(directory) / BUILDS
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
