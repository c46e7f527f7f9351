"""Building a module artifact from a source package (DESIGN.md, "WASM modules",
``CompileModuleArtifactFromSource``).

A ``ModuleSourcePackage`` maps relative paths to UTF-8 text and names its JSON manifest. The build
is in-process and deterministic: exactly one ``.wat`` source is compiled with the engine's WAT
compiler. Other languages are rejected with a clear reason (compile them off-chain and use
``deploy_module_artifact``). Paths are validated (relative, no ``..``, no absolute or drive paths,
no backslashes) and sizes are bounded.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..actions import ModuleSourcePackage
from ..codec import DecodeError, decode_json
from .manifest import ModuleManifest
from .sandbox import ModuleValidationError, wat_to_wasm

MAX_SOURCE_FILES = 32
MAX_PATH_CHARS = 200
MAX_SOURCE_FILE_BYTES = 192 * 1024
MAX_SOURCE_TOTAL_BYTES = 224 * 1024
OTHER_SOURCE_SUFFIXES = (".rs", ".c", ".cc", ".cpp", ".zig", ".go", ".ts", ".as", ".toml")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


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
        if not _SEGMENT_RE.match(segment):
            raise SourceRejected(
                f"source path {path[:60]!r}: segment {segment[:40]!r} may only use letters, digits and _.+- "
                "and must not start with '.' or '-'"
            )


def build_source_package(module_id: str, package: ModuleSourcePackage) -> tuple[ModuleManifest, bytes]:
    """Validate ``package`` and compile it; return ``(manifest, wasm_bytes)``.

    Raises SourceRejected when paths or sizes are invalid, the manifest is missing, is not a
    ModuleManifest, or names another module id, when there is no single ``.wat`` source, or when
    the WAT does not compile.
    """
    files = package.files
    if not files:
        raise SourceRejected("source package has no files; include a .wat source and its manifest JSON")
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
        others = sorted(p for p in files if p.endswith(OTHER_SOURCE_SUFFIXES))
        if others:
            raise SourceRejected(
                f"cannot compile {others[0]!r} in-world: only WebAssembly text (.wat) is compiled in-world for now; "
                "build other languages to .wasm yourself and use deploy_module_artifact"
            )
        raise SourceRejected("source package has no .wat source file")
    if len(wat_files) > 1:
        raise SourceRejected(f"source package has {len(wat_files)} .wat files {wat_files[:4]}; include exactly one")
    try:
        wasm = wat_to_wasm(files[wat_files[0]])
    except ModuleValidationError as exc:
        raise SourceRejected(f"{wat_files[0]}: {exc}") from None
    return manifest, wasm


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
