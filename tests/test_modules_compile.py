"""Compiling from source (docs/module-abi.md, "Compiling from source"): WAT in-process; otherwise the command in
AGENT_WORLD_MODULE_SOURCE_COMPILER; otherwise scripts/build-wasm-module.sh; every failure is a
clear rejection carrying the compiler's message."""

from __future__ import annotations

import shutil
import sys

import pytest

from agent_world_runtime.actions import CompileModuleArtifactFromSource, ModuleSourcePackage
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules import source
from tests.test_runtime_modules import alice, apply, const_module, rejection, world  # noqa: F401  (fixtures)

MANIFEST = '{"module_id": "cmod", "version": "1.0.0", "kind": "reducer", "exports": ["reduce"]}'
C_SOURCE = "int reduce(int p, int n) { return 0; }\n"


def package(**extra: str) -> ModuleSourcePackage:
    return ModuleSourcePackage(manifest_path="m.json", files={"m.json": MANIFEST, "sub/mod.c": C_SOURCE, **extra})


def compile_action(pkg: ModuleSourcePackage) -> CompileModuleArtifactFromSource:
    return CompileModuleArtifactFromSource(module_id="cmod", source_package=pkg)


def fake_compiler(tmp_path, body: str) -> str:
    """Write a small Python 'compiler' taking (src_dir, out_wasm) and return the env var value."""
    script = tmp_path / "fakecc.py"
    script.write_text("import sys, pathlib\nsrc, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n" + body)
    return f"{sys.executable} {script}"


def test_env_var_compiler_builds_the_artifact(world, alice, tmp_path, monkeypatch):
    wasm = const_module(b"\x80")
    (tmp_path / "built.wasm").write_bytes(wasm)
    body = (
        "assert (src / 'sub' / 'mod.c').read_text().startswith('int reduce')\n"
        f"out.write_bytes(pathlib.Path({str(tmp_path / 'built.wasm')!r}).read_bytes())\n"
    )
    monkeypatch.setenv(source.COMPILER_ENV, fake_compiler(tmp_path, body))
    [compiled] = apply(world, alice.sign(compile_action(package())))
    assert compiled.kind == "module.artifact_compiled", compiled.data
    assert compiled.data["wasm_hash"] == sha256(wasm).hex()  # the event records the bytes every node must build
    assert world.module_status()["artifacts"][0]["origin"] == "compiled"


def test_failed_build_is_rejected_with_the_compilers_message(world, alice, tmp_path, monkeypatch):
    body = "sys.stderr.write('mod.c:1:5: error: expected identifier\\n'); sys.exit(1)\n"
    monkeypatch.setenv(source.COMPILER_ENV, fake_compiler(tmp_path, body))
    reason = rejection(apply(world, alice.sign(compile_action(package()))))
    assert reason == "module build failed (exit 1): mod.c:1:5: error: expected identifier"
    assert world.module_status()["artifacts"] == []


def test_build_without_output_and_bad_output_are_rejected(world, alice, tmp_path, monkeypatch):
    monkeypatch.setenv(source.COMPILER_ENV, fake_compiler(tmp_path, "pass\n"))
    assert "wrote no output .wasm file" in rejection(apply(world, alice.sign(compile_action(package()))))
    monkeypatch.setenv(source.COMPILER_ENV, fake_compiler(tmp_path, "out.write_bytes(b'not wasm')\n"))
    assert "not a valid WebAssembly module" in rejection(apply(world, alice.sign(compile_action(package()))))
    monkeypatch.setattr(source, "MAX_BUILD_OUTPUT_BYTES", 4)
    monkeypatch.setenv(source.COMPILER_ENV, fake_compiler(tmp_path, "out.write_bytes(b'x' * 5)\n"))
    assert "is 5 bytes; the limit is 4" in rejection(apply(world, alice.sign(compile_action(package()))))


def test_missing_compiler_command_is_rejected(world, alice, monkeypatch):
    monkeypatch.setenv(source.COMPILER_ENV, "/nonexistent/wasm-cc --fast")
    reason = rejection(apply(world, alice.sign(compile_action(package()))))
    assert reason.startswith("module source compiler '/nonexistent/wasm-cc' was not found")


def test_build_timeout_is_rejected(world, alice, tmp_path, monkeypatch):
    monkeypatch.setattr(source, "BUILD_TIMEOUT_S", 1)
    monkeypatch.setenv(source.COMPILER_ENV, fake_compiler(tmp_path, "import time; time.sleep(30)\n"))
    assert "took longer than 1 s" in rejection(apply(world, alice.sign(compile_action(package()))))


def test_build_script_without_toolchain_is_a_clear_rejection(world, alice, tmp_path, monkeypatch):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    for tool in ("bash", "dirname"):  # only the shell itself: no clang, no python, no rustc on PATH
        if shutil.which(tool):
            (empty_path / tool).symlink_to(shutil.which(tool))
    monkeypatch.delenv(source.COMPILER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(empty_path))
    monkeypatch.setenv("PYTHON", "no-such-python")
    monkeypatch.setattr(source, "compiler_command", lambda: [str(empty_path / "bash"), str(source.BUILD_SCRIPT)])
    reason = rejection(apply(world, alice.sign(compile_action(package()))))
    assert reason.startswith("module build failed (exit 3): no C toolchain for wasm32"), reason
    pkg = ModuleSourcePackage(manifest_path="m.json", files={"m.json": MANIFEST, "README.md": "hi"})
    assert "no buildable source in the package" in rejection(apply(world, alice.sign(compile_action(pkg))))


def test_unsafe_paths_never_reach_the_compiler(world, alice, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv(source.COMPILER_ENV, fake_compiler(tmp_path, f"pathlib.Path({str(marker)!r}).write_text('x')\n"))
    for bad in ("../escape.c", "/abs.c", "a/../../b.c"):
        reason = rejection(apply(world, alice.sign(compile_action(package(**{bad: C_SOURCE})))))
        assert "source path" in reason
    assert not marker.exists()
