"""Build one module source package into wasm bytes, hermetically and within bounds.

``build_package(files, toolchain_name)`` is what a validator runs for a pending build (and what
``awnode module build`` runs). It blocks; callers run it in a worker thread. Only the returned
``BuildResult.code`` (and the wasm hash) may enter consensus; ``message`` is for logs and the API.

Steps:

1. Validate the package: 1..MAX_SOURCE_FILES files, each path ``check_source_path``-safe, the
   layout ``check_source_layout``-writable, at most MAX_SOURCE_FILE_BYTES per file and
   MAX_SOURCE_TOTAL_BYTES in total (UTF-8), the toolchain's root present (C: at least one ``*.c``;
   Rust: exactly one of ``lib.rs`` / ``src/lib.rs``), and the static source rules of
   ``sourcecheck`` (no absolute or ``..`` includes, no ``env!``...). Failure: INVALID_PACKAGE.
2. Write the files into a fresh temporary workspace ``W`` (``W/src`` the package, ``W/home`` HOME
   and TMPDIR, ``W/cache`` zig's caches, ``W/out`` the output); nothing else is in it and it is
   deleted afterwards, so builds never share state.
3. Run the compiler in its own process group: stdin closed, stdout+stderr captured up to
   ``capture_bytes`` (and the last ``TAIL_BYTES`` beyond), a fixed environment (PATH=/usr/bin:/bin, HOME and TMPDIR inside W,
   TZ=UTC, LC_ALL=C, SOURCE_DATE_EPOCH=0, ZIG_GLOBAL_CACHE_DIR / ZIG_LOCAL_CACHE_DIR inside W;
   nothing inherited), resource limits set by a tiny Python wrapper that then execs the compiler
   (RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, and RLIMIT_NPROC when the
   build runs as ``nobody``), and a wall-clock timeout after which the whole process group is
   SIGKILLed. When the node runs as root the build runs as uid/gid 65534 (``nobody``) with no
   supplementary groups.
4. Isolation. With bubblewrap (``bwrap``, Debian package ``bubblewrap``) working, the compiler runs
   in new user, mount, pid, network, ipc, uts and cgroup namespaces (``--unshare-all``,
   ``--die-with-parent``), seeing only ``/usr`` and the toolchain read-only, a private ``/proc``
   and the workspace read-write at ``/build``: no ``/etc``, ``/home``, ``/root``, ``/tmp``,
   ``/dev`` and no network. That is the real protection against sources that read host files
   (``#include "/etc/hostname"``, ``include_str!("/etc/passwd")``). Without a working bwrap
   (``sandbox="auto"`` falls back; ``sandbox_mode()`` says which) the only protections are the
   static rules of step 1, the unprivileged ``nobody`` user and the limits: a macro trick the static
   check misses could then read world-readable host files, and the build has the host's network
   (compilers do not use it). Run validators where bwrap works.
5. Compile with fixed flags (paths relative to W/src, the workspace mapped to ``/src`` so it never
   enters the output):

   - C (``zig cc``, zig from PyPI ``ziglang``): ``--target=wasm32-freestanding -O2 -nostdinc
     -nostdlib -Werror=date-time -ffile-prefix-map=W/src=/src -Wl,--no-entry -Wl,--strip-all
     -Wl,-z,stack-size=65536``,
     every ``*.c`` of the package in sorted order; exports come from
     ``__attribute__((export_name("...")))``. No libc and no system headers: ``__DATE__``,
     ``__TIME__`` and ``__TIMESTAMP__`` are errors.
   - Rust (``/usr/bin/rustc``, Debian): ``--edition 2021 --target wasm32-unknown-unknown
     --crate-type cdylib --crate-name module -O -C strip=symbols -C codegen-units=1
     -C link-arg=-zstack-size=65536 --remap-path-prefix W/src=/src``, root ``lib.rs`` or ``src/lib.rs``. A package is one crate;
     its other files are reached with ``mod``. No Cargo, no build scripts, no dependencies but
     ``core``/``alloc``/``std``.
6. The output ``W/out/module.wasm`` must be a regular file of 1..``output_bytes`` bytes
   (NO_OUTPUT / OUTPUT_TOO_LARGE).

Determinism: the same package with the same toolchain (``toolchains.local_toolchain``) gives the
same bytes in any workspace, on any machine, sandboxed or not (the tests build twice in different
workspaces). Codes for resource limits (CPU_LIMIT, MEMORY_LIMIT, TIMEOUT) depend on the machine's
speed and memory layout near the bounds; they are far above what a real module needs.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from agent_world_runtime.modules.source import (
    MAX_SOURCE_FILE_BYTES,
    MAX_SOURCE_FILES,
    MAX_SOURCE_TOTAL_BYTES,
    SourceRejected,
    check_source_layout,
    check_source_path,
)
from agent_world_runtime.modules.wasm_check import MAX_MODULE_BYTES
from agent_world_runtime.params import TOOLCHAIN_NAMES

from .sourcecheck import ForbiddenSource, check_package_sources
from .toolchains import INSTALL_HINT, InstalledToolchain, installed_toolchain

BWRAP = "/usr/bin/bwrap"
NOBODY = 65534
SANDBOX_ROOT = "/build"
OUTPUT_NAME = "module.wasm"
#: The shadow stack in linear memory (both toolchains otherwise reserve 1 MiB, which alone exceeds
#: the default ModuleLimits.max_mem_bytes).
STACK_BYTES = 64 * 1024


class BuildCode(enum.StrEnum):
    """The outcome of a build. ``OK`` and the codes in ``ATTESTABLE_FAILURES`` are deterministic
    for a package and toolchain (the ones a validator attests; equal to
    ``agent_world_runtime.modules.builds.BUILD_FAILURE_CODES``); ``LOCAL_FAILURES`` say this
    machine could not build (no toolchain, the sandbox failed) and must never be attested."""

    OK = "OK"
    COMPILE_ERROR = "COMPILE_ERROR"  # the compiler refused the sources (or crashed)
    TIMEOUT = "TIMEOUT"  # the wall-clock bound ended the build
    CPU_LIMIT = "CPU_LIMIT"  # RLIMIT_CPU ended the build
    MEMORY_LIMIT = "MEMORY_LIMIT"  # RLIMIT_AS made the compiler fail
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"  # the wasm exceeds output_bytes, or a file hit RLIMIT_FSIZE
    NO_OUTPUT = "NO_OUTPUT"  # the compiler succeeded but wrote no (or an empty) wasm file
    INVALID_PACKAGE = "INVALID_PACKAGE"  # paths, sizes, missing root, refused constructs
    NO_TOOLCHAIN = "NO_TOOLCHAIN"  # local: the toolchain is not installed here
    SANDBOX_ERROR = "SANDBOX_ERROR"  # local: the workspace or the sandbox could not be set up


ATTESTABLE_FAILURES = frozenset({
    BuildCode.COMPILE_ERROR, BuildCode.TIMEOUT, BuildCode.CPU_LIMIT, BuildCode.MEMORY_LIMIT,
    BuildCode.OUTPUT_TOO_LARGE, BuildCode.NO_OUTPUT, BuildCode.INVALID_PACKAGE,
})
LOCAL_FAILURES = frozenset({BuildCode.NO_TOOLCHAIN, BuildCode.SANDBOX_ERROR})


@dataclass(frozen=True)
class BuildLimits:
    """Bounds of one build. Units: seconds, bytes, counts.

    ``cpu_seconds``: RLIMIT_CPU per process (SIGXCPU, SIGKILL 5 s later); ``wall_seconds``: the
    whole build, then the process group is killed; ``memory_bytes``: RLIMIT_AS (address space per
    process; compilers reserve more than they touch); ``file_bytes``: RLIMIT_FSIZE (largest file
    any process may write); ``processes``: RLIMIT_NPROC, applied only when the build runs as
    ``nobody`` (as another user it would count that user's own processes); ``open_files``:
    RLIMIT_NOFILE; ``output_bytes``: largest accepted wasm (the deploy limit, MAX_MODULE_BYTES);
    ``capture_bytes``: compiler output kept (the rest is read and dropped); ``message_chars``: the
    longest ``BuildResult.message``."""

    cpu_seconds: int = 60
    wall_seconds: float = 120.0
    memory_bytes: int = 2 << 30
    file_bytes: int = 64 << 20
    processes: int = 256
    open_files: int = 256
    output_bytes: int = MAX_MODULE_BYTES
    capture_bytes: int = 64 * 1024
    message_chars: int = 4000


@dataclass(frozen=True)
class BuildResult:
    """A build's outcome: ``code``; ``wasm`` the module bytes (empty unless OK); ``message`` the
    compiler's output or the reason, truncated to ``BuildLimits.message_chars`` (never empty on
    failure; logs and API only, never consensus)."""

    code: BuildCode
    wasm: bytes
    message: str

    @property
    def ok(self) -> bool:
        return self.code is BuildCode.OK


# Runs as `python -I -S -c _WRAPPER cpu as fsize nofile nproc -- argv...`: sets the limits, then
# execs the command (no preexec_fn, which is unsafe in a threaded parent).
_WRAPPER = """
import os, resource as r, sys
a = sys.argv
def lim(res, soft, hard):
    cur = r.getrlimit(res)[1]
    if cur != r.RLIM_INFINITY:
        hard = min(hard, cur)
    r.setrlimit(res, (min(soft, hard), hard))
cpu, mem, fsize, nofile, nproc = (int(x) for x in a[1:6])
lim(r.RLIMIT_CPU, cpu, cpu + 5)
lim(r.RLIMIT_AS, mem, mem)
lim(r.RLIMIT_FSIZE, fsize, fsize)
lim(r.RLIMIT_NOFILE, nofile, nofile)
lim(r.RLIMIT_CORE, 0, 0)
if nproc >= 0:
    lim(r.RLIMIT_NPROC, nproc, nproc)
os.execv(a[7], a[7:])
"""


def _python(nobody: bool | None = None) -> str:
    """The interpreter for the limits wrapper: as ``nobody`` (default: whenever running as root),
    Debian's /usr/bin/python3 when present (the node's own interpreter may live under a private
    home directory)."""
    if (_drop_to_nobody() if nobody is None else nobody) and os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return os.path.realpath(sys.executable)


def _others_can_run(path: Path) -> bool:
    """True if a user with no owner or group rights can execute ``path`` (every parent directory
    searchable, the file executable by others)."""
    import stat

    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        structlog.get_logger(__name__).warning("build_user_not_dropped", reason=message)


def _drop_to_nobody() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _bwrap_argv(root_host: Path, read_only: tuple[Path, ...]) -> list[str]:
    argv = [BWRAP, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            argv += ["--symlink", os.readlink(target), f"/{link}"]
        elif target.is_dir():
            argv += ["--ro-bind", str(target), f"/{link}"]
    for path in read_only:
        if not str(path).startswith("/usr/") and str(path) != "/usr":
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--proc", "/proc", "--bind", str(root_host), SANDBOX_ROOT, "--chdir", f"{SANDBOX_ROOT}/src", "--"]
    return argv


_sandbox_lock = threading.Lock()
_sandbox_probe: dict[str, str] = {}


def sandbox_mode() -> str:
    """Return ``"bwrap"`` when bubblewrap can create the build sandbox here (probed once: an empty
    build root, as the build user), else ``"none"``. ``sandbox_problem()`` says why not."""
    with _sandbox_lock:
        if "mode" not in _sandbox_probe:
            _sandbox_probe["mode"], _sandbox_probe["why"] = _probe_bwrap()
        return _sandbox_probe["mode"]


def sandbox_problem() -> str:
    """Return why bwrap is not used (empty when ``sandbox_mode() == "bwrap"``)."""
    sandbox_mode()
    return _sandbox_probe["why"]


def _probe_bwrap() -> tuple[str, str]:
    if not os.access(BWRAP, os.X_OK):
        return "none", f"{BWRAP} is not installed (apt-get install bubblewrap)"
    tmp = Path(tempfile.mkdtemp(prefix="aw-build-probe-"))
    try:
        (tmp / "src").mkdir()
        if _drop_to_nobody():
            for p in (tmp, tmp / "src"):
                os.chown(p, NOBODY, NOBODY)
        argv = _bwrap_argv(tmp, ()) + ["/bin/sh", "-c", "test ! -e /etc/passwd && test -w /build/src"]
        try:
            proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30, check=False,
                                  env={"PATH": "/usr/bin:/bin"}, **_user_kwargs())
        except (OSError, subprocess.SubprocessError) as exc:
            return "none", f"bwrap failed to start: {exc}"
        if proc.returncode != 0:
            return "none", f"bwrap does not work here (exit {proc.returncode}): {proc.stderr.decode('utf-8', 'replace')[:300]}"
        return "bwrap", ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _user_kwargs(nobody: bool | None = None) -> dict[str, Any]:
    if _drop_to_nobody() if nobody is None else nobody:
        return {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    return {}


def _fail(code: BuildCode, message: str, limits: BuildLimits) -> BuildResult:
    return BuildResult(code, b"", _truncate(message or f"build failed: {code}", limits))


def _truncate(text: str, limits: BuildLimits) -> str:
    text = text.strip()
    if len(text) > limits.message_chars:
        return text[: limits.message_chars - 20] + "\n... (truncated)"
    return text


def validate_package(files: dict[str, str], toolchain_name: str, *, static_check: bool = True) -> tuple[list[str], str]:
    """Check ``files`` for ``toolchain_name`` (step 1 of the module docstring) and return
    ``(roots, "")`` (C: the ``.c`` files in sorted order; Rust: ``[root]``) or ``([], reason)``.
    ``static_check=False`` skips the ``sourcecheck`` rules (tests only)."""
    if toolchain_name not in TOOLCHAIN_NAMES:
        return [], f"unknown toolchain {toolchain_name!r}; expected one of {list(TOOLCHAIN_NAMES)}"
    if not files:
        return [], "the package has no files"
    if len(files) > MAX_SOURCE_FILES:
        return [], f"the package has {len(files)} files; the limit is {MAX_SOURCE_FILES}"
    total = 0
    try:
        for path in sorted(files):
            check_source_path(path)
            if not isinstance(files[path], str):
                return [], f"source file {path!r} is not text"
            size = len(files[path].encode("utf-8", "surrogatepass"))
            if size > MAX_SOURCE_FILE_BYTES:
                return [], f"source file {path!r} is {size} bytes; the limit is {MAX_SOURCE_FILE_BYTES}"
            if "\x00" in files[path]:
                return [], f"source file {path!r} contains a NUL character"
            total += size
        check_source_layout(files)
    except SourceRejected as exc:
        return [], str(exc)
    if total > MAX_SOURCE_TOTAL_BYTES:
        return [], f"the package is {total} bytes; the limit is {MAX_SOURCE_TOTAL_BYTES}"
    if toolchain_name == "c":
        roots = sorted(p for p in files if p.endswith(".c"))
        if not roots:
            return [], "a C package needs at least one .c file"
    else:
        candidates: list[str] = [p for p in ("lib.rs", "src/lib.rs") if p in files]
        if len(candidates) != 1:
            return [], "a Rust package is one crate rooted at exactly one of lib.rs or src/lib.rs (got " + (
                " and ".join(candidates) or "neither") + ")"
        roots = candidates
    if static_check:
        try:
            check_package_sources(files, toolchain_name)
        except ForbiddenSource as exc:
            return [], str(exc)
    return roots, ""


def compiler_argv(installed: InstalledToolchain, roots: list[str], root: str) -> list[str]:
    """Return the compiler command for ``roots`` (paths relative to ``root/src``, the working
    directory) writing ``root/out/module.wasm``; ``root`` is the workspace as the compiler sees it."""
    out = f"{root}/out/{OUTPUT_NAME}"
    if installed.toolchain.name == "c":
        return [
            str(installed.executable), "cc", "--target=wasm32-freestanding", "-O2", "-nostdinc", "-nostdlib",
            "-Werror=date-time", f"-ffile-prefix-map={root}/src=/src", f"-ffile-prefix-map={root}=/build",
            "-Wl,--no-entry", "-Wl,--strip-all", f"-Wl,-z,stack-size={STACK_BYTES}", "-o", out, *roots,
        ]
    return [
        str(installed.executable), "--edition", "2021", "--target", "wasm32-unknown-unknown", "--crate-type", "cdylib",
        "--crate-name", "module", "-O", "-C", "strip=symbols", "-C", "codegen-units=1",
        "-C", f"link-arg=-zstack-size={STACK_BYTES}", "--remap-path-prefix", f"{root}/src=/src", "--remap-path-prefix", f"{root}=/build", "-o", out, roots[0],
    ]


def _environment(root: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": f"{root}/home",
        "TMPDIR": f"{root}/home",
        "TZ": "UTC",
        "LC_ALL": "C",
        "LANG": "C",
        "SOURCE_DATE_EPOCH": "0",
        "ZIG_GLOBAL_CACHE_DIR": f"{root}/cache/global",
        "ZIG_LOCAL_CACHE_DIR": f"{root}/cache/local",
    }


def build_package(files: dict[str, str], toolchain_name: str, limits: BuildLimits = BuildLimits(),  # noqa: B008
                  *, sandbox: str = "auto") -> BuildResult:
    """Build the source package ``files`` (relative path -> UTF-8 text; other files such as the
    manifest JSON are copied along and ignored by the compiler) with the local toolchain
    ``toolchain_name`` (``"c"`` or ``"rust"``) under ``limits``; see the module docstring.

    ``sandbox``: ``"auto"`` (bwrap when it works, else unsandboxed), ``"bwrap"`` (SANDBOX_ERROR
    when it does not work) or ``"none"``. Blocks for up to ``limits.wall_seconds`` plus cleanup.
    Never raises for anything the package does; returns BuildResult (OK with the wasm bytes, or a
    failure code with a non-empty message)."""
    return _build(files, toolchain_name, limits, sandbox, static_check=True)


def _build(files: dict[str, str], toolchain_name: str, limits: BuildLimits, sandbox: str, *,
           static_check: bool) -> BuildResult:
    # static_check=False exists for the tests that show what the sandbox alone stops.
    roots, problem = validate_package(files, toolchain_name, static_check=static_check)
    if problem:
        return _fail(BuildCode.INVALID_PACKAGE, problem, limits)
    installed = installed_toolchain(toolchain_name)
    if installed is None:
        return _fail(BuildCode.NO_TOOLCHAIN, f"toolchain {toolchain_name!r} is not installed: {INSTALL_HINT[toolchain_name]}",
                     limits)
    if sandbox not in ("auto", "bwrap", "none"):
        raise ValueError(f"sandbox must be 'auto', 'bwrap' or 'none', not {sandbox!r}")
    # As root, the build drops to ``nobody`` when that user can run the toolchain; a toolchain
    # installed under a private directory (a venv in a 0700 checkout) is run as the node's own user,
    # still inside the sandbox and its limits, and the node says so once.
    nobody = _drop_to_nobody() and all(_others_can_run(Path(p)) for p in (installed.executable, _python(True)))
    if _drop_to_nobody() and not nobody:
        _warn_once(f"{installed.executable} is not runnable by uid {NOBODY}; builds of {toolchain_name!r} run as "
                   "the node's user inside the sandbox: install the toolchain where every user can run it")
    use_bwrap = sandbox != "none" and sandbox_mode() == "bwrap"
    if sandbox == "bwrap" and not use_bwrap:
        return _fail(BuildCode.SANDBOX_ERROR, f"the build sandbox is required but unavailable: {sandbox_problem()}", limits)
    try:
        ws = Path(tempfile.mkdtemp(prefix="aw-build-"))
    except OSError as exc:
        return _fail(BuildCode.SANDBOX_ERROR, f"cannot create a build workspace: {exc}", limits)
    try:
        try:
            _write_workspace(ws, files, nobody)
        except OSError as exc:
            return _fail(BuildCode.SANDBOX_ERROR, f"cannot write the build workspace: {exc}", limits)
        if nobody and not all(os.stat(parent).st_mode & 0o001 for parent in ws.parents):
            return _fail(BuildCode.SANDBOX_ERROR, f"builds run as uid {NOBODY}, which cannot reach the workspace {ws}: "
                         "set TMPDIR to a directory every user can traverse (e.g. /tmp)", limits)
        return _run_build(ws, installed, roots, limits, use_bwrap, nobody)
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def _write_workspace(ws: Path, files: dict[str, str], nobody: bool) -> None:
    for sub in ("src", "home", "cache", "out"):
        (ws / sub).mkdir()
    for rel, text in files.items():
        target = ws / "src" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8", "surrogatepass"))
    if nobody:
        for dirpath, _dirnames, filenames in os.walk(ws):
            os.chown(dirpath, NOBODY, NOBODY)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)


def _run_build(ws: Path, installed: InstalledToolchain, roots: list[str], limits: BuildLimits, use_bwrap: bool,
               nobody: bool) -> BuildResult:
    root = SANDBOX_ROOT if use_bwrap else str(ws)
    command = compiler_argv(installed, roots, root)
    nproc = limits.processes if nobody else -1
    argv = [_python(nobody), "-I", "-S", "-c", _WRAPPER, str(limits.cpu_seconds), str(limits.memory_bytes),
            str(limits.file_bytes), str(limits.open_files), str(nproc), "--"]
    argv += (_bwrap_argv(ws, installed.read_only_paths) if use_bwrap else []) + command
    try:
        proc = subprocess.Popen(
            argv, cwd=ws / "src", env=_environment(root), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, **_user_kwargs(nobody),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return _fail(BuildCode.SANDBOX_ERROR, f"cannot start the build: {exc}", limits)
    captured = bytearray()
    tail = bytearray()
    reader = threading.Thread(target=_drain, args=(proc.stdout, captured, limits.capture_bytes, tail), daemon=True)
    reader.start()
    timed_out = False
    try:
        returncode = proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        returncode = proc.wait()
    _kill_group(proc.pid)  # stragglers that outlived the compiler
    reader.join(timeout=10)
    if tail:  # the compiler's last words (e.g. "LLVM ERROR: out of memory") after a flood of errors
        captured += b"\n... (output cut) ...\n" + tail
    output = bytes(captured).decode("utf-8", "replace")
    if use_bwrap and returncode > 128:  # bwrap reports a child's death by signal N as exit 128 + N
        sig: int | None = returncode - 128
    else:
        sig = -returncode if returncode < 0 else None
    if timed_out:
        return _fail(BuildCode.TIMEOUT, f"the build took longer than {limits.wall_seconds:g} s and was stopped\n{output}", limits)
    if returncode != 0 and use_bwrap and output.startswith("bwrap:"):
        return _fail(BuildCode.SANDBOX_ERROR, f"the build sandbox failed (exit {returncode}): {output}", limits)
    if returncode != 0:
        code = _classify_failure(sig, output)
        what = f"signal {signal.Signals(sig).name}" if sig and sig in signal.Signals._value2member_map_ else f"exit {returncode}"
        return _fail(code, f"{_EXPLAIN[code].format(limits=limits)} ({what})\n{output}", limits)
    out = ws / "out" / OUTPUT_NAME
    try:
        fd = os.open(out, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return _fail(BuildCode.NO_OUTPUT, f"the compiler succeeded but wrote no {OUTPUT_NAME}\n{output}", limits)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not _is_regular(st.st_mode):
            return _fail(BuildCode.NO_OUTPUT, f"{OUTPUT_NAME} is not a regular file", limits)
        if st.st_size > limits.output_bytes:
            return _fail(BuildCode.OUTPUT_TOO_LARGE,
                         f"the module is {st.st_size} bytes; the limit is {limits.output_bytes}", limits)
        wasm = f.read(limits.output_bytes + 1)
    if not wasm:
        return _fail(BuildCode.NO_OUTPUT, f"the compiler wrote an empty {OUTPUT_NAME}\n{output}", limits)
    if len(wasm) > limits.output_bytes:
        return _fail(BuildCode.OUTPUT_TOO_LARGE, f"the module exceeds {limits.output_bytes} bytes", limits)
    return BuildResult(BuildCode.OK, wasm, _truncate(output, limits))


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _drain(stream: IO[bytes], captured: bytearray, cap: int, tail: bytearray) -> None:
    """Read ``stream`` to its end: keep its first ``cap`` bytes in ``captured`` and, of the rest,
    the last ``TAIL_BYTES`` in ``tail`` (a compiler that runs out of memory says so last)."""
    read = getattr(stream, "read1", stream.read)
    try:
        while chunk := read(65536):
            room = cap - len(captured)
            if room > 0:
                captured += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                tail += chunk
                del tail[:-TAIL_BYTES]
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


#: Bytes kept of the end of a compiler's output beyond ``capture_bytes``.
TAIL_BYTES = 4096
_FILE_TOO_LARGE = re.compile(r"file too large|filetoobig|efbig|SIGXFSZ", re.IGNORECASE)
_OUT_OF_MEMORY = re.compile(
    r"out of memory|outofmemory|memory allocation of|bad_alloc|cannot allocate memory|failed to allocate|"
    r"unable to allocate|mmap.*failed", re.IGNORECASE)
_CPU = re.compile(r"cpu time limit|SIGXCPU", re.IGNORECASE)

_EXPLAIN = {
    BuildCode.OUTPUT_TOO_LARGE: "a file written by the build exceeded {limits.file_bytes} bytes",
    BuildCode.MEMORY_LIMIT: "the compiler ran out of memory (limit {limits.memory_bytes} bytes of address space)",
    BuildCode.CPU_LIMIT: "the compiler used more than {limits.cpu_seconds} s of CPU time",
    BuildCode.COMPILE_ERROR: "compilation failed",
}


def _classify_failure(sig: int | None, output: str) -> BuildCode:
    if sig == signal.SIGXFSZ or _FILE_TOO_LARGE.search(output):
        return BuildCode.OUTPUT_TOO_LARGE
    if sig in (signal.SIGXCPU, signal.SIGKILL) or _CPU.search(output):
        return BuildCode.CPU_LIMIT
    if _OUT_OF_MEMORY.search(output) or sig == signal.SIGABRT:
        # under RLIMIT_AS a compiler's failed allocation usually ends in abort() (LLVM's "out of
        # memory", or an uncaught bad_alloc), and it does not always get to say so first
        return BuildCode.MEMORY_LIMIT
    return BuildCode.COMPILE_ERROR
