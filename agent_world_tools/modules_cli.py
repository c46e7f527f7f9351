"""``awnode module``: write, build, try out and publish world modules (docs/module-guide.md).

Commands::

    awnode module new NAME [--lang rust|c|wat] [--dir D]     a project skeleton that builds as is
    awnode module build [DIR]                                 build DIR/build/<module_id>.wasm
    awnode module test [DIR] --input JSON|FILE [--stage S]    one call in the real sandbox, with fees
    awnode module deploy [DIR] --key KEY --rpc URL            publish the built bytes and manifest
    awnode module install WASM_HASH|DIR --key KEY --rpc URL   install an artifact as an instance
    awnode module status --rpc URL                            artifacts and instances of a node

A project directory holds ``manifest.json`` (a ``ModuleManifest``) and the sources of one language:
``*.rs`` (one crate: ``lib.rs`` plus its ``mod`` files; the SDK ``sdk/rust/aw_sdk.rs`` is copied in),
``*.c`` / ``*.h``, or one ``*.wat``. ``build`` uses the node's hermetic builder
(``agent_world_node.builds.hermetic.build_package``) when it is available, otherwise it runs
``/usr/bin/rustc`` or ``python -m ziglang cc`` itself with the chain's flags (a small fallback, not
sandboxed). WAT is compiled in-process by the engine's WAT compiler.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from . import ui
from .signing import home_option, rpc_for, rpc_or_home_option

module_app = typer.Typer(rich_markup_mode=None, 
    help="Write, build, test and publish world modules (docs/module-guide.md).", no_args_is_help=True
)

LANGS = ("rust", "c", "wat")
REPO_ROOT = Path(__file__).resolve().parents[1]
SDK_FILE = REPO_ROOT / "sdk" / "rust" / "aw_sdk.rs"
C_EXAMPLE = REPO_ROOT / "examples" / "modules" / "c_counter" / "counter.c"
MANIFEST = "manifest.json"
BUILD_DIR = "build"
RUSTC = "/usr/bin/rustc"
# The fallback's flags follow the node's builder (agent_world_node/builds/hermetic.py), including its
# 64 KiB stack: the toolchains' default 1 MiB stack alone would cost 16 pages of gas per call.
STACK_BYTES = 65536
RUST_FLAGS = ["--edition", "2021", "--target", "wasm32-unknown-unknown", "--crate-type", "cdylib", "-O",
              "-C", "strip=symbols", "-C", "codegen-units=1", "-C", f"link-arg=-zstack-size={STACK_BYTES}"]
C_FLAGS = ["--target=wasm32-freestanding", "-O2", "-nostdlib", "-Wl,--no-entry", "-Wl,--strip-all",
           f"-Wl,-z,stack-size={STACK_BYTES}"]
INSTALL_HINT = {
    "rust": "apt-get install --no-install-recommends rustc libstd-rust-dev-wasm32 lld (or `make toolchains`)",
    "c": "pip install ziglang (into this Python environment, or `make toolchains`)",
}
BUILD_TIMEOUT_S = 300
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
STAGES = ("pre_action", "post_action", "post_event", "tick")


def fail(message: str) -> NoReturn:
    """Raise the CLI's CliError (one red line, exit status 1)."""
    raise ui.CliError(message)


# --- project files ------------------------------------------------------------------------------


@dataclass
class Project:
    """A module project directory: its language, manifest and source files (relative path -> text)."""

    root: Path
    lang: str
    manifest: Any  # ModuleManifest
    manifest_text: str
    sources: dict[str, str]

    @property
    def wasm_path(self) -> Path:
        return self.root / BUILD_DIR / f"{self.manifest.module_id}.wasm"


def load_project(directory: Path) -> Project:
    """Read ``directory``'s manifest and sources; CliError says what is missing or wrong."""
    from agent_world_runtime.codec import DecodeError, decode_json
    from agent_world_runtime.modules.manifest import ModuleManifest

    root = directory.resolve()
    if not root.is_dir():
        fail(f"{directory} is not a directory; create a project with `awnode module new NAME`")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        fail(f"no {MANIFEST} in {directory}; create a project with `awnode module new NAME` or add a manifest "
             "(docs/module-abi.md, 'Example manifest')")
    text = manifest_path.read_text()
    try:
        manifest = decode_json(text, ModuleManifest)
    except DecodeError as exc:
        fail(f"{manifest_path}: not a valid module manifest ({exc})")
    sources: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in (BUILD_DIR, "target") or any(p.startswith(".") for p in rel.parts) or not path.is_file():
            continue
        if path.suffix in (".rs", ".c", ".h", ".wat"):
            try:
                sources[rel.as_posix()] = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                fail(f"cannot read {path}: {exc}")
    langs = sorted({lang for lang, suffix in (("rust", ".rs"), ("c", ".c"), ("wat", ".wat"))
                    if any(p.endswith(suffix) for p in sources)})
    if not langs:
        fail(f"no sources in {directory}: expected lib.rs (Rust), *.c (C) or one *.wat")
    if len(langs) > 1:
        fail(f"{directory} mixes {' and '.join(langs)} sources; a module is built from one language")
    lang = langs[0]
    if lang == "wat" and sum(p.endswith(".wat") for p in sources) > 1:
        fail(f"{directory} has more than one .wat file; a WAT module is one file")
    if lang == "rust" and "lib.rs" not in sources and "src/lib.rs" not in sources:
        fail(f"{directory} has Rust files but no lib.rs (or src/lib.rs): that is the crate root rustc builds")
    return Project(root, lang, manifest, text, sources)


# --- build --------------------------------------------------------------------------------------


def _hermetic_builder() -> Any:
    try:
        from agent_world_node.builds.hermetic import build_package
    except ImportError:
        return None
    return build_package


def _check_sources(project: Project) -> None:
    """The chain's static source check (what a validator would refuse), when available."""
    try:
        from agent_world_node.builds.sourcecheck import ForbiddenSource, check_package_sources
    except ImportError:
        return
    try:
        check_package_sources(project.sources, project.lang)
    except ForbiddenSource as exc:
        fail(f"{exc}")


def _fallback_build(project: Project) -> bytes:
    """Build with the local compiler directly (no sandbox): the chain's command in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="aw-module-") as tmp:
        work = Path(tmp)
        for rel, text in project.sources.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        out = work / "module.wasm"
        if project.lang == "rust":
            if not Path(RUSTC).exists():
                fail(f"no Rust toolchain: {RUSTC} is missing; install it: {INSTALL_HINT['rust']}")
            if not Path(RUSTC).resolve().parents[1].joinpath("lib", "rustlib", "wasm32-unknown-unknown").is_dir():
                fail(f"{RUSTC} has no wasm32-unknown-unknown std; install it: {INSTALL_HINT['rust']}")
            main = "lib.rs" if "lib.rs" in project.sources else "src/lib.rs"
            argv = [RUSTC, *RUST_FLAGS, main, "-o", str(out)]
        else:
            try:
                import ziglang  # noqa: F401
            except ImportError:
                fail(f"no C toolchain for wasm32: the ziglang package is missing; install it: {INSTALL_HINT['c']}")
            c_files = sorted(p for p in project.sources if p.endswith(".c"))
            argv = [sys.executable, "-m", "ziglang", "cc", *C_FLAGS, "-o", str(out), *c_files]
        try:
            proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            fail(f"the {project.lang} build took longer than {BUILD_TIMEOUT_S} s")
        if proc.returncode != 0 or not out.is_file():
            message = (proc.stderr or proc.stdout).strip()
            fail(f"the {project.lang} build failed:\n{message[-3000:]}")
        return out.read_bytes()


def compile_project(project: Project) -> bytes:
    """Return the module bytes built from ``project``'s sources."""
    if project.lang == "wat":
        from agent_world_runtime.modules.sandbox import ModuleValidationError, wat_to_wasm

        (name, text), = ((p, t) for p, t in project.sources.items() if p.endswith(".wat"))
        try:
            return wat_to_wasm(text)
        except ModuleValidationError as exc:
            fail(f"{name}: {exc}")
    _check_sources(project)
    build_package = _hermetic_builder()
    if build_package is None:
        return _fallback_build(project)
    result = build_package(dict(project.sources), project.lang)
    wasm = getattr(result, "wasm", None)
    if not wasm:
        code = getattr(result, "code", "failed")
        message = getattr(result, "message", "") or ""
        fail(f"the {project.lang} build failed ({code}):\n{str(message)[-3000:]}")
    return bytes(wasm)


def check_module(project: Project, wasm: bytes) -> Any:
    """Compile ``wasm`` in the real sandbox as a deploy would; return the CompiledModule."""
    from agent_world_runtime.modules.lifecycle import entry_point
    from agent_world_runtime.modules.sandbox import ModuleValidationError, Sandbox

    sandbox = Sandbox()
    try:
        compiled = sandbox.compile(wasm)
    except ModuleValidationError as exc:
        fail(f"the built module would be refused by the chain: {exc}")
    entry = entry_point(project.manifest.kind)
    if entry not in compiled.entries:
        fail(f"manifest.json says kind {project.manifest.kind!r}, so the module must export {entry!r}; "
             f"it exports {sorted(compiled.entries)}")
    return sandbox, compiled


def build_project(directory: Path, *, quiet: bool = False) -> tuple[Project, bytes, str]:
    """Build ``directory``, write the .wasm, print a summary; return (project, wasm, wasm_hash)."""
    project = load_project(directory)
    wasm = compile_project(project)
    check_module(project, wasm)
    wasm_hash = hashlib.sha256(wasm).hexdigest()
    out = project.wasm_path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(wasm)
    if not quiet:
        console = ui.console
        console.print(f"built {project.manifest.module_id} {project.manifest.version} ({project.lang})", highlight=False)
        console.print(f"  wasm_hash  {wasm_hash}", highlight=False)
        console.print(f"  size       {len(wasm)} bytes", highlight=False)
        console.print(f"  written    {out}", highlight=False)
    return project, wasm, wasm_hash


# --- new ----------------------------------------------------------------------------------------

RUST_TEMPLATE = """\
//! {name}: an Agent World module (docs/module-guide.md). Edit `on_call`, then
//! `awnode module build` and `awnode module test --input '...'`.
#![no_std]

mod aw_sdk; // the SDK (a copy of sdk/rust/aw_sdk.rs): Input, Output, Value, Buf, Val

use aw_sdk::{{Input, Output, Value}};

aw_sdk::export_reducer!(on_call);

/// Called for each match of manifest.json's subscriptions (here: every move_agent, after it ran).
fn on_call(input: &Input, out: &mut Output) {{
    let action = match &input.action {{
        Some(a) if a.applied() => a,
        _ => return, // an empty output changes nothing
    }};
    // state: how many moves this instance has seen, as 8 little-endian bytes
    let mut seen = [0u8; 8];
    if let Some(state) = input.state {{
        if state.len() == 8 {{
            seen.copy_from_slice(state);
        }}
    }}
    let total = u64::from_le_bytes(seen) + 1;
    out.set_state(&total.to_le_bytes());
    out.emit("{name}.moved", &[("agent_id", Value::Str(action.agent_id)), ("total", Value::Int(total as i64))]);
}}
"""

WAT_TEMPLATE = """\
;; {name}: an Agent World module in WebAssembly text (docs/module-abi.md, docs/module-guide.md).
;; Every call returns the constant output at offset 16 (a msgpack ModuleOutput):
;;   {{"emits": [{{"kind": "{name}.called", "data": {{}}}}]}}
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "{output}")
  ;; alloc(len) -> ptr: a bump allocator (a fresh instance per call; inputs over ~60 KiB fail)
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (local.get $p))
  ;; reduce(ptr, len) -> (out_ptr << 32) | out_len
  (func (export "reduce") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {output_len})))
)
"""


def _manifest_text(name: str) -> str:
    manifest = {
        "module_id": name,
        "version": "0.1.0",
        "kind": "reducer",
        "interface_version": 1,
        "exports": ["reduce"],
        "subscriptions": [{"kind": "move_agent", "stage": "post_action"}],
        "required_caps": [],
        # Rust and C modules start with a few pages (a 64 KiB stack + data) and grow as they allocate
        "limits": {"max_mem_bytes": 2 * 1024 * 1024, "max_gas": 1_000_000, "max_call_rate": 100,
                   "max_output_bytes": 16384, "max_effects": 0, "max_emits": 1},
    }
    return json.dumps(manifest, indent=2) + "\n"


def _wat_source(name: str) -> str:
    from agent_world_runtime.codec import encode

    output = encode({"emits": [{"kind": f"{name}.called", "data": {}}]})
    escaped = "".join(f"\\{b:02x}" for b in output)
    return WAT_TEMPLATE.format(name=name, output=escaped, output_len=len(output))


@module_app.command("new")
def new(
    name: str = typer.Argument(..., help="Module id: a-z, 0-9 and '_', starting with a letter."),
    lang: str = typer.Option("rust", "--lang", help="Source language: rust, c or wat."),
    parent: Path = typer.Option(Path("."), "--dir", help="Where to create the project directory NAME."),
) -> None:
    """Create a module project that builds as is: sources, manifest.json, README.md."""
    cli = ui
    cli.quiet_logs()
    with cli.friendly_errors():
        if not NAME_RE.fullmatch(name):
            fail(f"invalid module name {name!r}: use 1-63 of a-z, 0-9 and '_', starting with a letter")
        if lang not in LANGS:
            fail(f"unknown --lang {lang!r}; choose one of {', '.join(LANGS)}")
        root = parent / name
        if root.exists():
            fail(f"{root} already exists; choose another name or --dir")
        files: dict[str, str] = {MANIFEST: _manifest_text(name)}
        if lang == "rust":
            if not SDK_FILE.is_file():
                fail(f"the Rust SDK {SDK_FILE} is missing; run awnode from an Agent World checkout")
            files["lib.rs"] = RUST_TEMPLATE.format(name=name)
            files["aw_sdk.rs"] = SDK_FILE.read_text()
        elif lang == "c":
            if not C_EXAMPLE.is_file():
                fail(f"the C example {C_EXAMPLE} is missing; run awnode from an Agent World checkout")
            files["module.c"] = C_EXAMPLE.read_text().replace("c_counter", name).replace("counter.moved", f"{name}.moved")
        else:
            files["module.wat"] = _wat_source(name)
        files["README.md"] = (
            f"# {name}\n\nAn Agent World module ({lang}). Build with `awnode module build`, try it with "
            "`awnode module test --input '{\"type\": \"move_agent\", \"agent_id\": \"alice\", \"to\": [1, 0, 0]}'`, "
            "publish with `awnode module deploy` and `awnode module install` (docs/module-guide.md).\n"
        )
        root.mkdir(parents=True)
        for rel, text in files.items():
            (root / rel).write_text(text)
        cli.console.print(f"created {root} ({lang}): {', '.join(sorted(files))}", highlight=False)
        cli.console.print(f"next: cd {root} && awnode module build", highlight=False)


# --- build --------------------------------------------------------------------------------------


@module_app.command("build")
def build(directory: Path = typer.Argument(Path("."), help="The project directory (with manifest.json).")) -> None:
    """Build the module and check it as the chain would; print its wasm_hash, size and path."""
    cli = ui
    cli.quiet_logs()
    with cli.friendly_errors():
        build_project(directory)


# --- test ---------------------------------------------------------------------------------------


def _read_input(source: str) -> dict[str, Any]:
    text = source
    if not source.lstrip().startswith("{"):
        try:
            text = Path(source).read_text()
        except OSError as exc:
            fail(f"--input {source!r} is neither JSON nor a readable file ({exc.strerror or exc})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--input is not JSON ({exc})")
    if not isinstance(obj, dict):
        fail('--input must be a JSON object, like {"type": "move_agent", "agent_id": "alice", "to": [1, 0, 0]}')
    return obj


def make_call_input(project: Project, obj: dict[str, Any], stage: Optional[str]) -> tuple[bytes, str]:
    """Encode a ModuleCallInput from the test JSON, as the router would; return (bytes, stage).

    ``obj`` is either a ModuleCallInput-like object (``ctx`` overrides, ``event``, ``action``,
    ``state`` as base64), or just an action (has ``type``) or just an event (has ``kind``)."""
    from agent_world_runtime.codec import encode
    from agent_world_runtime.events import Event
    from agent_world_runtime.modules import abi

    if "type" in obj:
        obj = {"action": obj}
    elif "kind" in obj:
        obj = {"event": obj}
    unknown = set(obj) - {"ctx", "event", "action", "state"}
    if unknown:
        fail(f"--input has unknown keys {sorted(unknown)}; use ctx, event, action and state (base64)")
    action = obj.get("action")
    event = obj.get("event")
    if action is not None and not (isinstance(action, dict) and isinstance(action.get("type"), str)):
        fail('--input action must be an object with a "type", like {"type": "move_agent", "agent_id": "alice"}')
    if event is not None and not (isinstance(event, dict) and isinstance(event.get("kind"), str)):
        fail('--input event must be an object with a "kind" and "data", like {"kind": "domain.agent_moved", "data": {}}')
    if stage is None:
        stage = "post_action" if action is not None else "post_event" if event is not None else "tick"
    if stage not in STAGES:
        fail(f"unknown --stage {stage!r}; choose one of {', '.join(STAGES)}")
    ctx_over = obj.get("ctx") or {}
    if not isinstance(ctx_over, dict):
        fail("--input ctx must be an object")
    m = project.manifest
    owner = ctx_over.get("owner_agent_id", "tester")
    ctx_fields: dict[str, Any] = {
        "chain_id": "module-test", "height": 1, "timestamp_ms": 0, "stage": stage, "trace_id": "test/1",
        "instance_id": f"{m.module_id}@{owner}", "module_id": m.module_id, "version": m.version,
        "owner_agent_id": owner,
    }
    ctx_fields.update(ctx_over)
    ctx_fields["stage"] = stage
    state = obj.get("state")
    try:
        ctx = msgspec.convert(ctx_fields, abi.ModuleContext)
        ev = None
        if event is not None and stage == "post_event":
            ev = Event(seq=int(event.get("seq", 1)), height=int(event.get("height", ctx.height)), kind=event["kind"],
                       data=dict(event.get("data") or {}))
        act = None
        if action is not None and stage in ("pre_action", "post_action"):
            act = {"agent_id": owner, "nonce": 1, **action}
            if stage == "post_action":
                act.setdefault("outcome", "applied")
            else:
                act.pop("outcome", None)
        state_bytes = base64.b64decode(state, validate=True) if isinstance(state, str) else None
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        fail(f"--input cannot be turned into a ModuleCallInput: {exc}")
    if state is not None and not isinstance(state, str):
        fail("--input state must be a base64 string (the bytes of a previous new_state)")
    reducer = m.kind == "reducer"
    payload = encode(abi.ModuleCallInput(ctx=ctx, event=ev, state=state_bytes if reducer else None, action=act))
    return payload, stage


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@module_app.command("test")
def test(
    directory: Path = typer.Argument(Path("."), help="The project directory (with manifest.json)."),
    input_: str = typer.Option(..., "--input", help="JSON (or a file of it): an action, an event, or "
                               "{ctx, event, action, state (base64)}."),
    stage: Optional[str] = typer.Option(None, "--stage", help="pre_action, post_action, post_event or tick; "
                                        "default: post_action for an action, post_event for an event, else tick."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build the module and run it once in the real sandbox; print its output, gas and fees."""
    from agent_world_runtime.modules import abi
    from agent_world_runtime.modules.billing import compute_fee, electricity_fee, gas_fee
    from agent_world_runtime.modules.lifecycle import entry_point
    from agent_world_runtime.params import WorldParams

    cli = ui
    cli.quiet_logs()
    with cli.friendly_errors():
        obj = _read_input(input_)
        project, wasm, wasm_hash = build_project(directory, quiet=True)
        payload, stage = make_call_input(project, obj, stage)
        params = WorldParams()
        sandbox, compiled = check_module(project, wasm)
        sandbox.set_module_limits_max(params.module_limits_max)
        limits = sandbox.capped_limits(project.manifest.limits)
        reducer = project.manifest.kind == "reducer"
        result = sandbox.call(compiled, entry_point(project.manifest.kind), payload, limits)
        code, detail, output = result.code, result.detail, None
        if result.ok:
            try:
                output = abi.decode_module_output(result.output, limits, reducer=reducer)
            except abi.OutputRejected as exc:
                code, detail = exc.code, exc.detail
        price = params.gas_price_per_mfuel
        if output is not None:
            n_eff, n_emit = len(output.effects), len(output.emits)
            data_fee = compute_fee(len(payload), len(result.output), n_eff, n_emit)
            elec = electricity_fee(n_eff, n_emit, output.new_state is not None)
        else:
            data_fee, elec = compute_fee(len(payload), 0, 0, 0), electricity_fee(0, 0, False)
        gas = gas_fee(result.gas_used, price)
        report: dict[str, Any] = {
            "module_id": project.manifest.module_id, "wasm_hash": wasm_hash, "stage": stage,
            "ok": output is not None, "code": code, "detail": detail,
            "gas_used": result.gas_used, "max_gas": limits.max_gas, "input_bytes": len(payload),
            "output_bytes": len(result.output) if output is not None else 0,
            "fees": {"compute_data": data_fee, "gas_data": gas, "electricity": elec, "gas_price_per_mfuel": price},
        }
        if output is not None:
            report["emits"] = [{"kind": e.kind, "data": _plain(e.data)} for e in output.emits]
            report["effects"] = [{"kind": e.kind, "params": _plain(e.params), "cap_ref": e.cap_ref} for e in output.effects]
            report["new_state"] = None if output.new_state is None else base64.b64encode(output.new_state).decode()
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            _print_test_report(cli.console, report, output)
        if output is None:
            raise typer.Exit(1)


def _print_test_report(console: Any, r: dict[str, Any], output: Any) -> None:
    console.print(f"{r['module_id']} {r['stage']} call ({r['input_bytes']} input bytes)", highlight=False)
    if output is None:
        console.print(f"[bold red]failed: {escape(str(r['code']))}[/bold red] {escape(r['detail'])}", highlight=False)
        console.print("  nothing of the output would be applied (no state, emits or effects)", highlight=False)
    else:
        console.print(f"[green]ok[/green] ({r['output_bytes']} output bytes)", highlight=False)
        console.print(f"  emits ({len(r['emits'])}):", highlight=False)
        for e in r["emits"]:
            console.print(f"    {escape(e['kind'])} {escape(json.dumps(e['data']))}", highlight=False)
        console.print(f"  effects ({len(r['effects'])}):", highlight=False)
        for e in r["effects"]:
            console.print(f"    {escape(e['kind'])} {escape(json.dumps(e['params']))} cap_ref={escape(e['cap_ref'])}",
                          highlight=False)
        if output.new_state is None:
            console.print("  new_state: unchanged", highlight=False)
        else:
            preview = output.new_state[:32].hex() + ("..." if len(output.new_state) > 32 else "")
            console.print(f"  new_state: {len(output.new_state)} bytes, hex {preview}", highlight=False)
            console.print(f"             base64 {r['new_state']}  (pass it back as \"state\" to chain calls)",
                          highlight=False)
    f = r["fees"]
    console.print(f"  gas_used: {r['gas_used']} of max_gas {r['max_gas']}", highlight=False)
    console.print(f"  fees (paid by the artifact's publisher): {f['compute_data'] + f['gas_data']} data "
                  f"(compute {f['compute_data']} + gas {f['gas_data']} at {f['gas_price_per_mfuel']} per million fuel), "
                  f"{f['electricity']} electricity", highlight=False)


# --- deploy, install, status ---------------------------------------------------------------------


def _signer(key_file: Path, agent_id: Optional[str]) -> tuple[Any, str]:
    key, file_agent = ui.read_agent_key(key_file)
    agent = agent_id or file_agent
    if not agent:
        fail(f"no agent id: pass --agent-id, or use a key file made with `awnode keygen --agent-id ID --out {key_file}`")
    return key, agent


def _submit(client: Any, rpc: str, key: Any, agent: str, action: Any) -> str:
    """Sign ``action`` with the agent's next nonce on the node's chain, submit it; return the action id."""
    from agent_world_client.client import NotFound
    from agent_world_runtime.actions import action_kind, sign_action, static_action_problem

    chain_id = client.status().get("chain_id")
    if not isinstance(chain_id, str):
        fail(f"the node at {rpc} did not report a chain_id")
    try:
        record = client.agent(agent)
    except NotFound:
        fail(f"agent {agent!r} does not exist on the node at {rpc}; an existing agent (on a testnet, the faucet: "
             "--key DIR/faucet.json) must create it first (see `awnode keygen --agent-id`)")
    last = record.get("last_nonce")
    if not isinstance(last, int):
        fail(f"the node at {rpc} reported no last_nonce for {agent!r}")
    signed = sign_action(key, chain_id, agent, last + 1, action)
    problem = static_action_problem(signed)
    if problem is not None:
        fail(problem)
    result = client.submit(signed)
    ui.console.print(f"submitted {action_kind(action)} agent={agent} nonce={last + 1} action_id={result.action_id}",
                         highlight=False)
    return result.action_id


def _wait(client: Any, action_id: str, done: Any, timeout: float, what: str) -> Any:
    """Poll until ``done(client.modules())`` returns a truthy value (returned) or a
    domain.action_rejected event names ``action_id`` (CliError with the node's reason)."""
    deadline = time.monotonic() + timeout
    cursor = 0
    while True:
        found = done(client.modules())
        if found:
            return found
        while True:
            events = client.events(from_seq=cursor, limit=1000, kind="domain.action_rejected")
            for event in events:
                data = event.get("data", {})
                if str(data.get("action_id", "")).lower() == action_id.lower():
                    fail(f"the chain rejected the {what}: {data.get('reason', '(no reason given)')}")
            if len(events) < 1000:
                if events:
                    cursor = events[-1]["seq"] + 1
                break
            cursor = events[-1]["seq"] + 1
        if time.monotonic() > deadline:
            fail(f"the {what} was not executed within {timeout:g} s; check later with `awnode module status` "
                 "(the node may be stalled or the action dropped)")
        time.sleep(0.3)


@module_app.command("deploy")
def deploy(
    directory: Path = typer.Argument(Path("."), help="The project directory (with manifest.json)."),
    key_file: Path = typer.Option(..., "--key", help="The publisher's agent key file (from `awnode keygen`)."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = typer.Option(None, "--agent-id", help="Agent id; default: the key file's agent_id."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the deploy to execute."),
) -> None:
    """Build the module and publish its bytes and manifest (deploy_module_artifact); wait for the result."""
    from agent_world_runtime.actions import DeployModuleArtifact

    cli = ui
    cli.quiet_logs()
    with cli.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = _signer(key_file, agent_id)
        project, wasm, wasm_hash = build_project(directory)
        m = project.manifest
        client = cli.make_client(rpc)
        for a in client.modules()["artifacts"]:
            if a.get("wasm_hash") == wasm_hash:
                cli.console.print(f"already deployed: {wasm_hash} ({a.get('module_id')} {a.get('version')}, "
                                  f"published by {a.get('publisher')}); install it with `awnode module install`",
                                  highlight=False)
                return
            if a.get("module_id") == m.module_id and a.get("publisher") != agent:
                fail(f"module id {m.module_id!r} belongs to agent {a.get('publisher')!r}; choose another module_id "
                     f"in {MANIFEST}")
            if a.get("module_id") == m.module_id and a.get("version") == m.version:
                fail(f"{m.module_id} {m.version} is already published as artifact {a.get('wasm_hash')}; bump "
                     f"\"version\" in {MANIFEST} (deploying it would be rejected and still pay the fee)")
        action_id = _submit(client, rpc, key, agent, DeployModuleArtifact(wasm_hash=wasm_hash, wasm_bytes=wasm,
                                                                          manifest=m))
        art = _wait(client, action_id, lambda mods: next((a for a in mods["artifacts"]
                                                          if a.get("wasm_hash") == wasm_hash), None),
                    timeout, "deploy")
        cli.console.print(f"[green]deployed[/green] {m.module_id} {m.version} wasm_hash={wasm_hash} "
                          f"size={art.get('size')} publisher={art.get('publisher')} height={art.get('published_at')}",
                          highlight=False)
        cli.console.print(f"next: awnode module install {wasm_hash} --key {key_file} --rpc {rpc}", highlight=False)


@module_app.command("compile")
def compile_in_world(
    directory: Path = typer.Argument(Path("."), help="The project directory (with manifest.json)."),
    key_file: Path = typer.Option(..., "--key", help="The publisher's agent key file (from `awnode keygen`)."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = typer.Option(None, "--agent-id", help="Agent id; default: the key file's agent_id."),
    timeout: float = typer.Option(180.0, "--timeout", help="Seconds to wait for the validators' build."),
) -> None:
    """Have the chain build the sources (compile_module_artifact_from_source): WAT compiles at once;
    C and Rust are built by the validators, whose agreed result registers the artifact. Waits for the
    outcome and prints the wasm_hash, or the build's code and this node's compiler message."""
    from agent_world_client.client import NotFound
    from agent_world_runtime.actions import CompileModuleArtifactFromSource, ModuleSourcePackage

    cli = ui
    cli.quiet_logs()
    with cli.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = _signer(key_file, agent_id)
        project = load_project(directory)
        _check_sources(project)
        files = {**project.sources, MANIFEST: project.manifest_text}
        m = project.manifest
        client = cli.make_client(rpc)
        action_id = _submit(client, rpc, key, agent, CompileModuleArtifactFromSource(
            module_id=m.module_id, source_package=ModuleSourcePackage(manifest_path=MANIFEST, files=files)))
        if project.lang == "wat":
            art = _wait(client, action_id, lambda mods: next((a for a in mods["artifacts"] if a.get("module_id")
                        == m.module_id and a.get("version") == m.version), None), timeout, "compile")
            cli.console.print(f"[green]compiled[/green] {m.module_id} {m.version} wasm_hash={art.get('wasm_hash')}",
                              highlight=False)
            return
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        cursor = 0
        while time.monotonic() < deadline:
            try:
                doc = client.build(action_id)
            except NotFound:  # not executed yet, or rejected before any build was recorded
                doc = {}
                for event in client.events(from_seq=cursor, limit=1000, kind="domain.action_rejected"):
                    cursor = max(cursor, event["seq"] + 1)
                    if str(event.get("data", {}).get("action_id", "")).lower() == action_id.lower():
                        fail(f"the chain rejected the compile: {event['data'].get('reason', '(no reason given)')}")
            if doc.get("status") in ("registered", "failed"):
                break
            time.sleep(0.5)
        status_ = doc.get("status")
        if status_ == "registered":
            cli.console.print(f"[green]built[/green] {m.module_id} {m.version} wasm_hash={doc.get('wasm_hash')} "
                              f"(build {action_id}, {len(doc.get('attestations', {}))} attestations)", highlight=False)
            cli.console.print(f"next: awnode module install {doc.get('wasm_hash')} --key {key_file} --rpc {rpc}",
                              highlight=False)
            return
        message = (doc.get("this_node") or {}).get("message", "")
        if status_ == "failed":
            fail(f"the build failed: {doc.get('code')}" + (f"; this node's compiler said: {message[:1500]}" if message
                                                            else ""))
        fail(f"build {action_id} is not settled after {timeout:g} s (status {status_ or 'not recorded'}); check "
             f"GET {rpc}/v1/builds/{action_id}")


@module_app.command("install")
def install(
    target_ref: str = typer.Argument(..., metavar="WASM_HASH|DIR", help="An artifact's wasm_hash, or a project "
                                     "directory (built to find its wasm_hash)."),
    key_file: Path = typer.Option(..., "--key", help="The publisher's agent key file."),
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    agent_id: Optional[str] = typer.Option(None, "--agent-id", help="Agent id; default: the key file's agent_id."),
    instance_id: str = typer.Option("", "--instance-id", help="Default: <module_id>@<agent_id>."),
    target: str = typer.Option("", "--target", help="self_agent (default: every matching event and action), "
                               "agent:<agent_id> or location:<x>,<y>,<z>."),
    grant: list[str] = typer.Option([], "--grant", help="A capability to grant (repeatable), e.g. agent.transfer."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the install to execute."),
) -> None:
    """Install a deployed artifact as a module instance owned by your agent (install_module_from_artifact)."""
    from agent_world_runtime.actions import InstallModuleFromArtifact

    cli = ui
    cli.quiet_logs()
    with cli.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        key, agent = _signer(key_file, agent_id)
        if re.fullmatch(r"[0-9a-f]{64}", target_ref):
            wasm_hash = target_ref
        elif Path(target_ref).is_dir():
            wasm_hash = build_project(Path(target_ref), quiet=True)[2]
        else:
            fail(f"{target_ref!r} is neither a wasm_hash (64 lowercase hex characters) nor a project directory")
        client = cli.make_client(rpc)
        mods = client.modules()
        art = next((a for a in mods["artifacts"] if a.get("wasm_hash") == wasm_hash), None)
        if art is None:
            fail(f"the node at {rpc} has no artifact {wasm_hash}; deploy it first: awnode module deploy DIR --key "
                 f"{key_file} --rpc {rpc}")
        if art.get("publisher") != agent:
            fail(f"artifact {wasm_hash} was published by {art.get('publisher')!r}; only its publisher may install it")
        iid = instance_id or f"{art.get('module_id')}@{agent}"
        if any(i.get("instance_id") == iid for i in mods["instances"]):
            fail(f"instance {iid!r} already exists; pass another --instance-id")
        action_id = _submit(client, rpc, key, agent, InstallModuleFromArtifact(
            wasm_hash=wasm_hash, instance_id=instance_id, install_target=target, grant_caps=list(grant)))
        inst = _wait(client, action_id, lambda m: next((i for i in m["instances"] if i.get("instance_id") == iid), None),
                     timeout, "install")
        cli.console.print(f"[green]installed[/green] instance={iid} module={inst.get('module_id')} "
                          f"{inst.get('version')} wasm_hash={wasm_hash} target={inst.get('install_target')} "
                          f"active={inst.get('active')}", highlight=False)


@module_app.command("status")
def status(
    rpc_given: Optional[str] = rpc_or_home_option(),
    home: Optional[Path] = home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """List a node's module artifacts and instances."""
    cli = ui
    cli.quiet_logs()
    with cli.friendly_errors():
        rpc = rpc_for(rpc_given, home)
        mods = cli.make_client(rpc).modules()
        if as_json:
            typer.echo(json.dumps(mods, indent=2, sort_keys=True))
            return
        arts = Table(title=f"artifacts at {rpc} (full hashes: --json)")
        for col in ("module_id", "version", "wasm_hash", "publisher", "size", "height", "origin"):
            arts.add_column(col, no_wrap=col in ("wasm_hash", "module_id"), overflow="fold")
        for a in mods["artifacts"]:
            arts.add_row(*(escape(str(v)) for v in (a.get("module_id"), a.get("version"), str(a.get("wasm_hash"))[:16] + "...",
                                                     a.get("publisher"), a.get("size"), a.get("published_at"),
                                                     a.get("origin"))))
        insts = Table(title=f"instances at {rpc}")
        cols = ("instance_id", "version", "owner_agent_id", "install_target", "active", "state_bytes")
        for col in cols:
            insts.add_column(col.replace("_agent_id", "").replace("install_", ""), no_wrap=col == "instance_id", overflow="fold")
        for i in mods["instances"]:
            insts.add_row(*(escape(str(i.get(c, ""))) for c in cols))
        cli.console.print(arts)
        cli.console.print(insts)


__all__ = ["module_app", "build_project", "load_project", "make_call_input", "SDK_FILE"]
