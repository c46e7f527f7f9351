"""Source packages whose paths cannot be written as one directory tree on every file system are
rejected with a message naming both paths (docs/module-abi.md, "Publishing"): a path that is both
a file and a directory, and names differing only by letter case. They never reach the workspace
or the compiler."""

from __future__ import annotations

import pytest

from agent_world_runtime.actions import ModuleSourcePackage
from agent_world_runtime.modules import source
from tests.test_modules_compile import C_SOURCE, MANIFEST, compile_action, package
from tests.test_runtime_modules import alice, apply, rejection, world  # noqa: F401  (fixtures)

CONFLICTS = [
    ({"a": "x", "a/b.c": C_SOURCE}, ["'a/b.c'", "'a'", "also a file"]),
    ({"sub": "x"}, ["'sub/mod.c'", "'sub'", "also a file"]),  # with package()'s sub/mod.c
    ({"lib.c": "x", "lib.c/inner.c": C_SOURCE}, ["'lib.c/inner.c'", "'lib.c'"]),
    ({"Mod.c": C_SOURCE, "mod.c": C_SOURCE}, ["'Mod.c' (file)", "'mod.c' (file)", "letter case"]),
    ({"Sub/other.c": C_SOURCE}, ["'Sub' (directory)", "'sub' (directory)", "letter case"]),
    ({"SUB": "x"}, ["'SUB' (file)", "'sub' (directory)", "letter case"]),
]


@pytest.mark.parametrize(("extra", "words"), CONFLICTS)
def test_conflicting_paths_are_rejected_before_any_build(world, alice, extra, words):
    reason = rejection(apply(world, alice.sign(compile_action(package(**extra)))))
    for word in words:
        assert word in reason, reason
    assert "internal error" not in reason


def test_conflicts_are_rejected_for_wat_packages_too():
    pkg = ModuleSourcePackage(manifest_path="m.json", files={"m.json": MANIFEST, "mod.wat": "(module)", "M.json": "{}"})
    with pytest.raises(source.SourceRejected, match="differ only by letter case"):
        source.prepare_source_package("cmod", pkg)


def test_distinct_paths_sharing_a_prefix_are_fine():
    source.check_source_layout(["a", "ab/c.c", "a.c", "x/y.c", "x/z.c", "x/sub/w.c", "m.json"])
