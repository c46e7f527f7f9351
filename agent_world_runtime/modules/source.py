"""Checking a module source package and compiling its WAT (the ``CompileModuleArtifactFromSource``
action; docs/module-abi.md, "Compiling from source").

A ``ModuleSourcePackage`` maps relative paths to UTF-8 text and names its JSON manifest. Paths
are validated (relative, no ``..``, no absolute or drive paths, no backslashes, no file that is also
a directory, no two names equal ignoring case) and sizes are bounded. Then
(``prepare_source_package``):

1. a package with a ``.wat`` source: exactly one, compiled here, in-process, by the engine's WAT
   compiler (deterministic for the pinned engine, linear in the text);
2. a package of C or Rust sources is not built here: the world records a build request and the
   validators build it off the consensus path (``modules.builds``, ``agent_world_node.builds``).

The world never runs a compiler process: nothing here depends on the machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..actions import ModuleSourcePackage
from ..codec import DecodeError, decode_json
from .builds import toolchain_of
from .manifest import ModuleManifest
from .sandbox import ModuleValidationError, wat_to_wasm

MAX_SOURCE_FILES = 32
MAX_PATH_CHARS = 200
MAX_SOURCE_FILE_BYTES = 192 * 1024
MAX_SOURCE_TOTAL_BYTES = 224 * 1024

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


class SourceRejected(ValueError):
    """The source package cannot be built; the message says what was wrong and what to do."""


def check_source_path(path: str) -> None:
    """Raise SourceRejected unless ``path`` is a safe relative path: '/'-separated segments of
    ``[A-Za-z0-9_.+-]`` (not starting with '.' or '-', so no '..'), at most MAX_PATH_CHARS."""
    if not path or len(path) > MAX_PATH_CHARS:
        raise SourceRejected(f"source path {path[:60]!r} must be 1..{MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise SourceRejected(f"source path {path[:60]!r} must be relative, with '/' separators")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise SourceRejected(f"source path {path[:60]!r} has an empty, '.' or '..' segment")
        if not _SEGMENT_RE.fullmatch(segment):
            raise SourceRejected(
                f"source path {path[:60]!r}: segment {segment[:40]!r} may only use letters, digits and _.+- "
                "and must not start with '.' or '-'"
            )


def check_source_layout(paths: Iterable[str]) -> None:
    """Raise SourceRejected unless the (already safe, ``check_source_path``) ``paths`` can be
    written as one directory tree on any file system: no path is a file and also a directory of
    another path, and no two distinct file or directory names are equal ignoring ASCII case. The
    message names both paths and what to do."""
    seen: dict[str, tuple[str, str]] = {}  # lower-cased node -> (spelling, "file" | "directory")
    for path in sorted(paths):
        segments = path.split("/")
        for depth in range(1, len(segments) + 1):
            node = "/".join(segments[:depth])
            kind = "file" if depth == len(segments) else "directory"
            prior = seen.setdefault(node.lower(), (node, kind))
            if prior == (node, kind):
                continue
            other, other_kind = prior
            if other == node:  # the same name as a file and as a directory
                raise SourceRejected(
                    f"source path {path!r} needs {node!r} to be a directory, but {node!r} is also a file in "
                    "the package; rename or move one of them"
                )
            raise SourceRejected(
                f"source paths {other!r} ({other_kind}) and {node!r} ({kind}) differ only by letter case; "
                "a case-insensitive file system would merge them, so rename one of them"
            )


def prepare_source_package(module_id: str, package: ModuleSourcePackage) -> tuple[ModuleManifest, bytes | None, str | None]:
    """Validate ``package`` and return ``(manifest, wasm, toolchain)``: for a WAT package the
    compiled ``wasm`` and None; for C or Rust sources None and the toolchain name (``"c"`` or
    ``"rust"``; the build happens off the consensus path).

    Raises SourceRejected when paths or sizes are invalid, the paths conflict
    (``check_source_layout``), the manifest is missing, is not a ModuleManifest, or names another
    module id, when there is more than one ``.wat`` source, when the WAT does not compile, or when
    there is no buildable source (``.wat``, ``.c`` or ``.rs``).
    """
    files = package.files
    if not files:
        raise SourceRejected("source package has no files; include a .wat, .c or .rs source and its manifest JSON")
    if len(files) > MAX_SOURCE_FILES:
        raise SourceRejected(f"source package has {len(files)} files; the limit is {MAX_SOURCE_FILES}")
    total = 0
    for path, text in files.items():
        check_source_path(path)
        size = len(text.encode("utf-8"))
        if size > MAX_SOURCE_FILE_BYTES:
            raise SourceRejected(f"source file {path!r} is {size} bytes; the limit is {MAX_SOURCE_FILE_BYTES}")
        total += size
    if total > MAX_SOURCE_TOTAL_BYTES:
        raise SourceRejected(f"source package is {total} bytes; the limit is {MAX_SOURCE_TOTAL_BYTES}")
    check_source_layout(files)
    check_source_path(package.manifest_path)
    if package.manifest_path not in files:
        raise SourceRejected(f"manifest_path {package.manifest_path!r} is not one of the package files {sorted(files)[:8]}")
    try:
        manifest = decode_json(files[package.manifest_path], ModuleManifest)
    except DecodeError as exc:
        raise SourceRejected(f"manifest {package.manifest_path!r} is not a valid ModuleManifest: {exc}") from None
    if manifest.module_id != module_id:
        raise SourceRejected(
            f"manifest module_id {manifest.module_id!r} does not match the action's module_id {module_id!r}"
        )
    wat_files = sorted(p for p in files if p.endswith(".wat"))
    if not wat_files:
        toolchain = toolchain_of(files)
        if toolchain is None:
            raise SourceRejected("source package has no .wat, .c or .rs source; include one")
        return manifest, None, toolchain
    if len(wat_files) > 1:
        raise SourceRejected(f"source package has {len(wat_files)} .wat files {wat_files[:4]}; include exactly one")
    try:
        wasm = wat_to_wasm(files[wat_files[0]])
    except ModuleValidationError as exc:
        raise SourceRejected(f"{wat_files[0]}: {exc}") from None
    return manifest, wasm, None


def package_from_files(paths: list[str | Path], manifest: str | Path) -> ModuleSourcePackage:
    """Read local files into a ModuleSourcePackage keyed by file name (for CLIs and tests).

    ``manifest`` must be one of ``paths``. Raises OSError if a file cannot be read, ValueError if
    two files share a name or the manifest is not among ``paths``.
    """
    files: dict[str, str] = {}
    for p in map(Path, paths):
        if p.name in files:
            raise ValueError(f"two files named {p.name!r}; a package is flat")
        files[p.name] = p.read_text(encoding="utf-8")
    name = Path(manifest).name
    if name not in files:
        raise ValueError(f"manifest {name!r} is not among the package files {sorted(files)}")
    return ModuleSourcePackage(manifest_path=name, files=files)
