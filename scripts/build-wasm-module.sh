#!/usr/bin/env bash
# build-wasm-module.sh SRC_DIR OUT_WASM
#
# Builds an Agent World module (docs/module-abi.md) from the sources in SRC_DIR into OUT_WASM.
# Called by CompileModuleArtifactFromSource for non-WAT packages when AGENT_WORLD_MODULE_SOURCE_COMPILER
# is not set; runs in a temporary workspace under a time limit set by the caller.
#
#   *.c   -> clang --target=wasm32 (needs clang + lld), else `python3 -m ziglang cc` (PyPI ziglang)
#   *.rs  -> rustc --target wasm32-unknown-unknown (/usr/bin/rustc first: Debian's has the wasm32 std)
#
# Exit 0 with OUT_WASM written, or non-zero with the reason on stderr (a missing toolchain is exit 3).
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: build-wasm-module.sh SRC_DIR OUT_WASM" >&2
    exit 2
fi
src=$1
out=$2
cd "$src"
shopt -s nullglob globstar
c_files=(**/*.c)
rs_files=(**/*.rs)

if [ "${#c_files[@]}" -gt 0 ]; then
    flags=(-O2 -nostdlib -Wl,--no-entry -Wl,--strip-all -o "$out" "${c_files[@]}")
    if command -v clang >/dev/null 2>&1 && { command -v wasm-ld || command -v ld.lld; } >/dev/null 2>&1; then
        exec clang --target=wasm32 -mbulk-memory "${flags[@]}"
    fi
    py=${PYTHON:-python3}
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "import ziglang" >/dev/null 2>&1; then
        exec "$py" -m ziglang cc --target=wasm32-freestanding "${flags[@]}"
    fi
    echo "no C toolchain for wasm32: install clang and lld (apt-get install clang lld) or the ziglang package (pip install ziglang)" >&2
    exit 3
fi

if [ "${#rs_files[@]}" -gt 0 ]; then
    main=lib.rs
    [ -f "$main" ] || main=${rs_files[0]}
    for rustc in /usr/bin/rustc "$(command -v rustc 2>/dev/null || true)"; do
        [ -n "$rustc" ] && [ -x "$rustc" ] || continue
        sysroot=$("$rustc" --print sysroot 2>/dev/null) || continue
        if [ -d "$sysroot/lib/rustlib/wasm32-unknown-unknown" ]; then
            exec "$rustc" --target wasm32-unknown-unknown --crate-type cdylib -O -C strip=symbols -C lto \
                -C codegen-units=1 "$main" -o "$out"
        fi
    done
    echo "no Rust toolchain for wasm32: install rustc with the wasm32-unknown-unknown std (apt-get install rustc libstd-rust-dev-wasm32 lld, or rustup target add wasm32-unknown-unknown)" >&2
    exit 3
fi

echo "no buildable source in the package: expected .wat, .c or .rs files" >&2
exit 2
