"""Hermetic module builds (agent_world_node.builds): real C (zig cc) and Rust (Debian rustc) builds,
reproducibility across workspaces and sandbox modes, and hostile sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent_world_node.builds import (
    ATTESTABLE_FAILURES,
    BuildCode,
    BuildLimits,
    build_package,
    hermetic,
    local_toolchain,
    sandbox_mode,
    toolchain_mismatch,
)
from agent_world_node.builds.toolchains import INSTALL_HINT
from agent_world_runtime.modules.manifest import ModuleLimits
from agent_world_runtime.modules.sandbox import Sandbox
from agent_world_runtime.params import Toolchain

C_MODULE = """\
static unsigned char heap[65536];
static unsigned int top = 0;
__attribute__((export_name("alloc"))) int alloc(int n) { unsigned int p = top; top += (unsigned)n; return (int)(heap + p); }
/* echo: the output is the input */
__attribute__((export_name("reduce"))) long long reduce(int ptr, int len) {
    return ((long long)(unsigned)ptr << 32) | (unsigned)len;
}
"""

RUST_MODULE = """\
mod echo;
static mut HEAP: [u8; 65536] = [0; 65536];
static mut TOP: usize = 0;
#[no_mangle]
pub extern "C" fn alloc(n: i32) -> i32 {
    unsafe { let p = TOP; TOP += n as usize; (HEAP.as_ptr() as usize + p) as i32 }
}
#[no_mangle]
pub extern "C" fn reduce(ptr: i32, len: i32) -> i64 { echo::pack(ptr, len) }
"""
RUST_ECHO = "pub fn pack(ptr: i32, len: i32) -> i64 { ((ptr as u32 as i64) << 32) | (len as u32 as i64) }\n"

MANIFEST = '{"module_id": "echo", "version": "1.0.0"}'
# tight enough that a runaway compiler stops quickly, wide enough for the real modules
SMALL = BuildLimits(cpu_seconds=10, wall_seconds=60, memory_bytes=2 << 30)


def need(name: str) -> None:
    if local_toolchain(name) is None:
        pytest.skip(f"toolchain {name!r} is not installed: {INSTALL_HINT[name]}")


def c_package(source: str = C_MODULE, **extra: str) -> dict[str, str]:
    return {"echo.c": source, "manifest.json": MANIFEST, **extra}


def rust_package(source: str = RUST_MODULE, **extra: str) -> dict[str, str]:
    return {"lib.rs": source, "echo.rs": RUST_ECHO, "manifest.json": MANIFEST, **extra}


def assert_failed(result, *codes: BuildCode) -> None:
    assert result.code in codes, (result.code, result.message)
    assert result.wasm == b""
    assert result.message.strip()


@pytest.mark.parametrize("name,package", [("c", c_package), ("rust", rust_package)])
def test_real_build_runs_in_the_sandbox(name, package):
    need(name)
    result = build_package(package(), name)
    assert result.code is BuildCode.OK, result.message
    sandbox = Sandbox()
    compiled = sandbox.compile(result.wasm)
    call = sandbox.call(compiled, "reduce", b"hello module", ModuleLimits())
    assert call.ok, call
    assert call.output == b"hello module"


@pytest.mark.parametrize("name,package", [("c", c_package), ("rust", rust_package)])
def test_same_bytes_across_workspaces_and_sandbox_modes(name, package):
    need(name)
    hashes = {hashlib.sha256(build_package(package(), name, sandbox=mode).wasm).hexdigest()
              for mode in ("auto", "auto", "none")}
    assert len(hashes) == 1
    assert hashlib.sha256(b"").hexdigest() not in hashes


def test_workspace_path_never_enters_the_output():
    need("c")
    result = build_package(c_package(C_MODULE + 'const char *where(void) { return __FILE__; }\n'
                                     '__attribute__((export_name("f"))) int f(void) { return (int)where(); }\n'), "c")
    assert result.code is BuildCode.OK, result.message
    assert b"aw-build-" not in result.wasm and b"/tmp" not in result.wasm


@pytest.mark.parametrize("source", [
    C_MODULE + "const char *d = __DATE__;\n",
    C_MODULE + "const char *t = __TIME__;\n",
    C_MODULE + "const char *t = __TIMESTAMP__;\n",
])
def test_time_macros_fail_deterministically(source):
    need("c")
    assert_failed(build_package(c_package(source), "c"), BuildCode.COMPILE_ERROR)


@pytest.mark.parametrize("name,files", [
    ("c", {"m.c": '#include "/etc/hostname"\n'}),
    ("c", {"m.c": '#include "../../../../etc/hostname"\n'}),
    ("c", {"m.c": '#define P "/etc/hostname"\n#include P\n'}),
    ("c", {"m.c": '%:include "/etc/hostname"\n'}),
    ("c", {"m.c": '#inc\\\nlude "/etc/hostname"\n'}),
    ("c", {"m.c": '#if __has_include("/etc/hostname")\nint x;\n#endif\n'}),
    ("c", {"m.c": '__asm__(".incbin \\"/etc/hostname\\"");\n'}),
    ("c", {"m.c": '#include "/dev/zero"\n'}),
    ("c", {"m.c": "#include <stdio.h>\n", "x.h": '#include "/dev/urandom"\n'}),
    ("rust", {"lib.rs": 'pub static X: &str = include_str!("/etc/passwd");\n'}),
    ("rust", {"lib.rs": 'pub static X: &[u8] = include_bytes!("../../etc/passwd");\n'}),
    ("rust", {"lib.rs": 'pub static X: &str = include_str!(concat!("/etc", "/passwd"));\n'}),
    ("rust", {"lib.rs": 'macro_rules! p { () => { "/etc/passwd" } }\npub static X: &str = include_str!(p!());\n'}),
    ("rust", {"lib.rs": 'macro_rules! m { ($n:ident) => { $n!("/etc/passwd") } }\npub static X: &str = m!(include_str);\n'}),
    ("rust", {"lib.rs": 'use core::include_str as inc;\npub static X: &str = inc!("/etc/passwd");\n'}),
    ("rust", {"lib.rs": '#[path = "/etc/passwd"]\nmod p;\n'}),
    ("rust", {"lib.rs": 'pub static H: Option<&str> = option_env!("HOME");\n'}),
    ("rust", {"lib.rs": 'pub static H: &str = env!("PATH");\n'}),
])
def test_host_file_reads_are_refused_in_every_mode(name, files):
    need(name)
    for mode in ("auto", "none"):
        assert_failed(build_package(files, name, SMALL, sandbox=mode), BuildCode.INVALID_PACKAGE)


@pytest.mark.parametrize("name,files", [
    ("c", {"m.c": '#define P "/etc/hostname"\n#include P\n'}),
    ("c", {"m.c": '#define P "/dev/zero"\n#include P\n'}),
    ("rust", {"lib.rs": 'macro_rules! m { ($n:ident) => { $n!("/etc/passwd") } }\npub static X: &str = m!(include_str);\n'}),
])
def test_the_sandbox_alone_hides_host_files(name, files):
    """With the static check off, bwrap is what stops the read: the files do not exist inside."""
    need(name)
    if sandbox_mode() != "bwrap":
        pytest.skip(f"bubblewrap does not work here ({hermetic.sandbox_problem()}); apt-get install bubblewrap")
    result = hermetic._build(files, name, SMALL, "bwrap", static_check=False)
    assert_failed(result, BuildCode.COMPILE_ERROR)
    assert "root:" not in result.message


def test_recursive_include_is_a_compile_error():
    need("c")
    files = c_package(C_MODULE + '#include "loop.h"\n', **{"loop.h": '#include "loop.h"\n'})
    assert_failed(build_package(files, "c", SMALL), BuildCode.COMPILE_ERROR)


def test_exploding_preprocessor_hits_a_limit():
    need("c")
    defines = "#define A0 x\n" + "".join(f"#define A{i + 1} A{i} A{i}\n" for i in range(40))
    limits = BuildLimits(cpu_seconds=2, wall_seconds=30, memory_bytes=1 << 30)
    assert_failed(build_package(c_package(defines + "A40\n"), "c", limits),
                  BuildCode.CPU_LIMIT, BuildCode.MEMORY_LIMIT, BuildCode.TIMEOUT)


def test_wall_clock_bound_stops_the_build():
    need("c")
    defines = "#define A0 x\n" + "".join(f"#define A{i + 1} A{i} A{i}\n" for i in range(40))
    limits = BuildLimits(cpu_seconds=60, wall_seconds=0.5, memory_bytes=2 << 30)
    assert_failed(build_package(c_package(defines + "A40\n"), "c", limits),
                  BuildCode.TIMEOUT, BuildCode.CPU_LIMIT, BuildCode.MEMORY_LIMIT)


def test_large_output_is_refused():
    need("c")
    big = C_MODULE + ('static volatile unsigned char b[1 << 20] = {1};\n'
                      '__attribute__((export_name("big"))) int big(int i) { return b[i]; }\n')
    assert_failed(build_package(c_package(big), "c", SMALL), BuildCode.OUTPUT_TOO_LARGE)


def test_file_size_limit_stops_a_huge_object():
    need("c")
    big = C_MODULE + ('static volatile unsigned char b[64 << 20] = {1};\n'
                      '__attribute__((export_name("big"))) int big(int i) { return b[i]; }\n')
    limits = BuildLimits(cpu_seconds=20, wall_seconds=60, file_bytes=8 << 20)
    assert_failed(build_package(c_package(big), "c", limits), BuildCode.OUTPUT_TOO_LARGE, BuildCode.MEMORY_LIMIT)


def test_giant_array_in_memory_is_a_limit_not_a_crash():
    need("c")
    big = C_MODULE + ('static volatile unsigned char b[1u << 31] = {1};\n'
                      '__attribute__((export_name("big"))) int big(int i) { return b[i]; }\n')
    result = build_package(c_package(big), "c", SMALL)
    assert_failed(result, *ATTESTABLE_FAILURES)
    assert result.code is not BuildCode.COMPILE_ERROR or result.message


@pytest.mark.parametrize("name,files", [
    ("c", {"m.c": "int x = ;\n"}),
    ("c", {"m.c": "int main(void) { return 0; }\n"}),  # no exports, no entry: links, but nothing useful
    ("rust", {"lib.rs": "fn f( {}\n"}),
    ("rust", {"lib.rs": "extern crate serde;\n"}),
])
def test_compile_errors_carry_the_compiler_message(name, files):
    need(name)
    result = build_package(files, name, SMALL)
    if result.code is BuildCode.OK:
        assert result.wasm
        return
    assert_failed(result, BuildCode.COMPILE_ERROR)
    assert "error" in result.message.lower()


@pytest.mark.parametrize("files,name", [
    ({}, "c"),
    ({"manifest.json": MANIFEST}, "c"),
    ({"echo.rs": RUST_ECHO}, "rust"),
    ({"lib.rs": "", "src/lib.rs": ""}, "rust"),
    ({"/abs.c": ""}, "c"),
    ({"a/../b.c": ""}, "c"),
    ({"A.c": "", "a.c": ""}, "c"),
    ({"m.c": "x" * (300 * 1024)}, "c"),
    ({"m.c": ""}, "fortran"),
])
def test_invalid_packages(files, name):
    assert_failed(build_package(files, name), BuildCode.INVALID_PACKAGE)


def test_toolchain_description_and_mismatch():
    need("c")
    local = local_toolchain("c")
    assert local is not None and local.name == "c" and len(local.compiler_sha256) == 64
    assert toolchain_mismatch(local, local) is None
    assert "version" in (toolchain_mismatch(Toolchain("c", "0.0.0", local.compiler_sha256), local) or "")
    assert "sha256" in (toolchain_mismatch(Toolchain("c", local.version, "0" * 64), local) or "")
    assert "not installed" in (toolchain_mismatch(local, None) or "")
    with pytest.raises(ValueError):
        local_toolchain("cobol")


def test_rust_toolchain_is_debian_rustc_with_wasm32_std():
    need("rust")
    local = local_toolchain("rust")
    assert local is not None and local.version.startswith("rustc ")
    assert Path("/usr/bin/rustc").exists()


def test_no_workspace_is_left_behind(monkeypatch):
    need("c")
    import os
    import shutil
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="aw-build-test-", dir="/tmp"))
    try:
        parent.chmod(0o755)  # builds run as nobody when the tests run as root
        monkeypatch.setattr(tempfile, "tempdir", str(parent))
        assert build_package(c_package(), "c").code is BuildCode.OK
        assert build_package(c_package("int x = ;\n"), "c").code is BuildCode.COMPILE_ERROR
        assert list(parent.iterdir()) == []
        from agent_world_node.builds import installed_toolchain
        from agent_world_node.builds.hermetic import _others_can_run

        as_nobody = os.geteuid() == 0 and _others_can_run(installed_toolchain("c").executable)
        if as_nobody:  # a workspace nobody cannot reach is this machine's problem, not the package's
            parent.chmod(0o700)
            assert_failed(build_package(c_package(), "c"), BuildCode.SANDBOX_ERROR)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_toolchain_nobody_cannot_run_is_run_as_the_node_user(monkeypatch):
    """A toolchain installed under a private directory (a venv in a 0700 checkout) still builds: as
    the node's own user, inside the sandbox and its limits, instead of failing as a local error."""
    need("c")
    import os

    from agent_world_node.builds import hermetic

    if os.geteuid() != 0:
        pytest.skip("only a root node drops builds to nobody")
    monkeypatch.setattr(hermetic, "_others_can_run", lambda path: False)
    result = build_package(c_package(), "c")
    assert result.code is BuildCode.OK, result.message
