"""The compilers this machine has for module builds, described as ``Toolchain`` values.

Two toolchains exist (``agent_world_runtime.params.TOOLCHAIN_NAMES``):

- ``"c"``: the ``zig`` executable of the PyPI package ``ziglang`` installed in this Python
  environment (``python -m ziglang cc`` runs the same executable); ``version`` is the output of
  ``zig version`` (e.g. ``"0.17.1"``), ``compiler_sha256`` the sha256 of that executable.
- ``"rust"``: Debian's ``/usr/bin/rustc`` (never a rustup ``rustc`` from PATH, which usually lacks
  the wasm32 std); ``version`` is the output of ``rustc --version`` (e.g. ``"rustc 1.63.0"``),
  ``compiler_sha256`` the sha256 of the rustc executable with symlinks resolved. It counts as
  installed only when the wasm32-unknown-unknown std (``libstd-rust-dev-wasm32``) and the linker
  ``rust-lld`` (package ``lld``) are present.

Hashing the zig executable (about 180 MB) takes a fraction of a second, so results are cached per
(path, size, mtime, inode) of the executable: an upgrade in place is noticed at the next call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from agent_world_runtime.params import TOOLCHAIN_NAMES, Toolchain

RUSTC = Path("/usr/bin/rustc")
RUST_LINKER = Path("/usr/bin/rust-lld")
WASM32_RUST_TARGET = "wasm32-unknown-unknown"
INSTALL_HINT = {
    "c": "pip install ziglang==0.17.1 (into the node's Python environment; `make toolchains`)",
    "rust": "apt-get install --no-install-recommends rustc libstd-rust-dev-wasm32 lld (`make toolchains`)",
}
_PROBE_TIMEOUT_S = 30


@dataclass(frozen=True)
class InstalledToolchain:
    """A toolchain found on this machine: its public description ``toolchain``, the real path of
    the compiler ``executable``, and ``read_only_paths``: the host directories a build sandbox must
    expose read-only for the compiler to run (its own files, shared libraries, std)."""

    toolchain: Toolchain
    executable: Path
    read_only_paths: tuple[Path, ...]


_cache: dict[tuple[str, str, int, int, int], InstalledToolchain | None] = {}
_cache_lock = threading.Lock()


def _file_key(name: str, path: Path) -> tuple[str, str, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (name, str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of the file at ``path`` (read in 1 MiB chunks). Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _run_text(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(
            argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=_PROBE_TIMEOUT_S, check=False,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/nonexistent"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace").strip() or None


def zig_executable() -> Path | None:
    """Return the real path of the ``zig`` executable inside the installed ``ziglang`` package,
    or None when the package is not installed in this Python environment."""
    try:
        spec = importlib.util.find_spec("ziglang")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        exe = Path(location) / "zig"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe.resolve()
    return None


def _detect_c() -> InstalledToolchain | None:
    exe = zig_executable()
    if exe is None:
        return None
    version = _run_text([str(exe), "version"])
    if version is None:
        return None
    return InstalledToolchain(Toolchain(name="c", version=version, compiler_sha256=file_sha256(exe)), exe, (exe.parent,))


def _detect_rust() -> InstalledToolchain | None:
    if not RUSTC.exists():
        return None
    exe = RUSTC.resolve()
    version = _run_text([str(exe), "--version"])
    sysroot = _run_text([str(exe), "--print", "sysroot"])
    if version is None or sysroot is None:
        return None
    std_dir = Path(sysroot) / "lib" / "rustlib" / WASM32_RUST_TARGET / "lib"
    try:
        has_std = any(p.name.startswith("libstd-") and p.suffix == ".rlib" for p in std_dir.iterdir())
    except OSError:
        has_std = False
    if not has_std or not RUST_LINKER.exists():
        return None
    # Debian's rustc is a small stub; the compiler is librustc_driver, so both are hashed.
    drivers = sorted(p for lib in (Path(sysroot) / "lib", *Path(sysroot, "lib").glob("*-linux-gnu"))
                     for p in lib.glob("librustc_driver-*.so"))
    if not drivers:
        return None
    digest = hashlib.sha256(bytes.fromhex(file_sha256(exe)))
    for driver in drivers:
        digest.update(bytes.fromhex(file_sha256(driver)))
    # rustc, its driver and LLVM libraries, the std and the linker all live under /usr.
    return InstalledToolchain(Toolchain(name="rust", version=version, compiler_sha256=digest.hexdigest()), exe,
                              (Path("/usr"),))


def installed_toolchain(name: str) -> InstalledToolchain | None:
    """Return the installed toolchain ``name`` (``"c"`` or ``"rust"``) with its paths, or None
    when it is not installed (or not usable: no wasm32 std, no linker, ``--version`` fails).
    Raises ValueError for a name outside ``TOOLCHAIN_NAMES``."""
    if name not in TOOLCHAIN_NAMES:
        raise ValueError(f"unknown toolchain {name!r}; expected one of {list(TOOLCHAIN_NAMES)}")
    probe = zig_executable() if name == "c" else RUSTC
    key = _file_key(name, probe) if probe is not None else None
    if key is None:
        return None
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    found = _detect_c() if name == "c" else _detect_rust()
    with _cache_lock:
        _cache[key] = found
    return found


def local_toolchain(name: str) -> Toolchain | None:
    """Return this machine's ``Toolchain`` for ``name`` (``"c"`` or ``"rust"``), or None when it
    is not installed (see ``INSTALL_HINT[name]``). Raises ValueError for an unknown name."""
    found = installed_toolchain(name)
    return found.toolchain if found else None


def toolchain_mismatch(wanted: Toolchain, local: Toolchain | None) -> str | None:
    """Return None when ``local`` is exactly ``wanted`` (name, version and compiler sha256), else
    a one-line reason for logs why this validator does not build and attest (missing toolchain,
    another version, other compiler bytes)."""
    if local is None:
        hint = INSTALL_HINT.get(wanted.name, "")
        return f"toolchain {wanted.name!r} ({wanted.version}) is not installed here" + (f"; install: {hint}" if hint else "")
    if local.name != wanted.name:
        return f"local toolchain is {local.name!r}, the build wants {wanted.name!r}"
    if local.version != wanted.version:
        return f"toolchain {wanted.name!r}: the chain pins version {wanted.version!r}, this machine has {local.version!r}"
    if local.compiler_sha256 != wanted.compiler_sha256:
        return (
            f"toolchain {wanted.name!r} {wanted.version}: compiler sha256 {local.compiler_sha256[:16]}... here, "
            f"the chain pins {wanted.compiler_sha256[:16]}... (another build of the same version)"
        )
    return None
