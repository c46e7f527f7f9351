"""Hermetic, bounded module builds from source, off the consensus path.

A compile action only records a build request (``agent_world_runtime.modules.builds``); every
validator whose local toolchain equals the chain's pinned ``Toolchain`` (``toolchain_mismatch``)
builds the package with ``build_package`` in a worker thread and attests the result. Only
``BuildResult.code`` and the wasm hash may enter consensus; the compiler's ``message`` goes to
logs and the API.

Isolation and limits (details in ``hermetic``):

- a fresh temporary workspace holding only the package files, deleted afterwards; no shared caches;
- a separate process group, stdin closed, output captured up to 64 KiB, a fixed environment
  (TZ=UTC, LC_ALL=C, SOURCE_DATE_EPOCH=0, HOME/TMPDIR/zig caches inside the workspace);
- limits (``BuildLimits`` defaults): 60 s CPU per process, 120 s wall clock for the whole build
  (then the process group is killed), 2 GiB address space, 64 MiB per written file, 256 open
  files, no core dumps, 256 processes when run as ``nobody``; output at most 256 KiB
  (MAX_MODULE_BYTES);
- as root, the build runs as uid/gid 65534 (``nobody``);
- bubblewrap when it works here (``sandbox_mode()``): new namespaces incl. network, only ``/usr``
  and the toolchain visible read-only, the workspace read-write. Without it, a static source check
  (``sourcecheck``, applied in every mode so all validators agree) refuses absolute and ``..``
  includes, ``include_str!``/``include_bytes!`` of such paths, ``env!``, ``incbin``; that check
  is not a sandbox;
- fixed compiler flags (``-nostdinc -nostdlib -Werror=date-time`` for C through ``zig cc``;
  ``/usr/bin/rustc --edition 2021 --target wasm32-unknown-unknown --crate-type cdylib -O -C
  strip=symbols -C codegen-units=1`` for Rust) with the workspace path remapped, so the same
  package and toolchain give the same bytes everywhere.
"""

from .hermetic import (
    ATTESTABLE_FAILURES,
    LOCAL_FAILURES,
    BuildCode,
    BuildLimits,
    BuildResult,
    build_package,
    sandbox_mode,
    sandbox_problem,
    validate_package,
)
from .sourcecheck import ForbiddenSource, check_package_sources
from .toolchains import InstalledToolchain, installed_toolchain, local_toolchain, toolchain_mismatch

__all__ = [
    "ATTESTABLE_FAILURES",
    "LOCAL_FAILURES",
    "BuildCode",
    "BuildLimits",
    "BuildResult",
    "ForbiddenSource",
    "InstalledToolchain",
    "build_package",
    "check_package_sources",
    "installed_toolchain",
    "local_toolchain",
    "sandbox_mode",
    "sandbox_problem",
    "toolchain_mismatch",
    "validate_package",
]
