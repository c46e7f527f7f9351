"""Building a module artifact from a source package (the ``CompileModuleArtifactFromSource``
action; docs/module-abi.md, "Compiling from source").

A ``ModuleSourcePackage`` maps relative paths to UTF-8 text and names its JSON manifest. Paths
are validated (relative, no ``..``, no absolute or drive paths, no backslashes) and sizes are
bounded. The paths must also form a tree that every node can write the same way
(``check_source_layout``): no path is both a file and a directory (``a`` with ``a/b.c``), and no
two files or directories differ only by letter case (``A.c`` with ``a.c``, ``Src/`` with
``src/``), since a case-insensitive file system would merge them. The build:

1. a package with a ``.wat`` source: exactly one, compiled in-process by the engine's WAT compiler
   (deterministic for the pinned engine);
2. otherwise the files are written into a temporary workspace and built by the command in the
   environment variable ``AGENT_WORLD_MODULE_SOURCE_COMPILER`` (split like a shell command) or, if
   unset, ``scripts/build-wasm-module.sh`` (C via clang or ziglang, Rust via a wasm32 rustc). The
   command is run as ``<command> <src_dir> <out.wasm>`` with cwd ``src_dir``, at most
   BUILD_TIMEOUT_S seconds; the output must exist and be at most MAX_BUILD_OUTPUT_BYTES. A missing
   toolchain, a failed or timed-out build is a SourceRejected carrying the compiler's message.

Determinism rule (docs/module-abi.md, "Compiling from source"): compilation happens while the
action executes, on every node. WAT is deterministic. An external toolchain is node configuration
that every validator of a world must pin identically (same command, same compiler version): the
``module.artifact_compiled`` event records the resulting ``wasm_hash``, and a node whose toolchain
produces other bytes computes another state root and falls out of consensus visibly rather than
silently. Worlds that cannot pin a toolchain should compile client-side and deploy the bytes with
``deploy_module_artifact``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

import structlog

from ..actions import ModuleSourcePackage
from ..codec import DecodeError, decode_json
from .manifest import ModuleManifest
from .sandbox import ModuleValidationError, wat_to_wasm

MAX_SOURCE_FILES = 32
MAX_PATH_CHARS = 200
MAX_SOURCE_FILE_BYTES = 192 * 1024
MAX_SOURCE_TOTAL_BYTES = 224 * 1024
COMPILER_ENV = "AGENT_WORLD_MODULE_SOURCE_COMPILER"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-wasm-module.sh"
BUILD_TIMEOUT_S = 120
MAX_BUILD_OUTPUT_BYTES = 1 << 20
MAX_COMPILER_MESSAGE_CHARS = 1500

log = structlog.get_logger(__name__)

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


def build_source_package(module_id: str, package: ModuleSourcePackage) -> tuple[ModuleManifest, bytes]:
    """Validate ``package`` and compile it; return ``(manifest, wasm_bytes)``.

    Raises SourceRejected when paths or sizes are invalid, the paths conflict
    (``check_source_layout``), the manifest is missing, is not a
    ModuleManifest, or names another module id, when there is more than one ``.wat`` source, when
    the WAT does not compile, or when the external build (``build_external``) fails.
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
        return manifest, build_external(files)
    if len(wat_files) > 1:
        raise SourceRejected(f"source package has {len(wat_files)} .wat files {wat_files[:4]}; include exactly one")
    try:
        wasm = wat_to_wasm(files[wat_files[0]])
    except ModuleValidationError as exc:
        raise SourceRejected(f"{wat_files[0]}: {exc}") from None
    return manifest, wasm


def compiler_command() -> list[str]:
    """Return the external build command: ``AGENT_WORLD_MODULE_SOURCE_COMPILER`` split like a
    shell command, or ``bash scripts/build-wasm-module.sh``. Raises SourceRejected if the
    variable is set but empty or unparsable."""
    configured = os.environ.get(COMPILER_ENV)
    if configured is None:
        return ["bash", str(BUILD_SCRIPT)]
    try:
        cmd = shlex.split(configured)
    except ValueError as exc:
        raise SourceRejected(f"{COMPILER_ENV}={configured[:80]!r} cannot be parsed: {exc}") from None
    if not cmd:
        raise SourceRejected(f"{COMPILER_ENV} is set but empty; unset it or name a compiler command")
    return cmd


def build_external(files: dict[str, str]) -> bytes:
    """Write ``files`` (paths already validated) into a temporary workspace, run
    ``compiler_command() + [src_dir, out_wasm]`` there under BUILD_TIMEOUT_S and return the
    module bytes. Raises SourceRejected with the compiler's message (stderr, else stdout,
    truncated) when the paths conflict (``check_source_layout``), the command is missing, fails,
    times out, or writes no or too large output."""
    check_source_layout(files)
    cmd = compiler_command()
    with tempfile.TemporaryDirectory(prefix="aw-module-build-") as tmp:
        src = Path(tmp) / "src"
        out = Path(tmp) / "out.wasm"
        for rel, text in files.items():
            target = src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        try:
            proc = subprocess.run(
                [*cmd, str(src), str(out)], cwd=src, capture_output=True, timeout=BUILD_TIMEOUT_S,
                stdin=subprocess.DEVNULL, check=False,
            )
        except FileNotFoundError:
            raise SourceRejected(
                f"module source compiler {cmd[0]!r} was not found; install it or set {COMPILER_ENV} to a working command"
            ) from None
        except PermissionError:
            raise SourceRejected(f"module source compiler {cmd[0]!r} is not executable") from None
        except subprocess.TimeoutExpired:
            raise SourceRejected(f"module build took longer than {BUILD_TIMEOUT_S} s and was stopped") from None
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip()
            log.info("module build failed", exit_code=proc.returncode, compiler=cmd[0])
            raise SourceRejected(
                f"module build failed (exit {proc.returncode}): {message[-MAX_COMPILER_MESSAGE_CHARS:] or 'no message'}"
            )
        try:
            size = out.stat().st_size
        except OSError:
            raise SourceRejected("module build succeeded but wrote no output .wasm file") from None
        if size > MAX_BUILD_OUTPUT_BYTES:
            raise SourceRejected(f"module build output is {size} bytes; the limit is {MAX_BUILD_OUTPUT_BYTES}")
        return out.read_bytes()


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
