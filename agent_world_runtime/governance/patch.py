"""JSON Patch (RFC 6902) on the manifest's JSON form, with JSON Pointers (RFC 6901)
(docs/governance.md, "Patches").

The JSON form of a manifest is ``msgspec.to_builtins(manifest)``: objects for structs (every
field present, except the defaults of ``ModuleChange``), arrays for lists, ``null`` for a missing
``module_changes``. ``apply_patch`` runs ``add``, ``replace``, ``remove`` and ``test`` on a copy of
that form, then decodes the result back into a ``Manifest`` with msgspec's strict types and checks
its sections (``validate``). ``diff_manifest`` is the inverse: the fewest replace/add/remove
operations that turn one manifest into another, in a deterministic order. Nothing here reads a
clock, randomness or the world state.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from .manifest import Manifest, ModuleChangeSet
from .records import PatchOp
from .validate import check_section, check_world_params

#: At most this many operations in one patch.
MAX_PATCH_OPS = 64
#: A JSON Pointer of at most this many characters and reference tokens.
MAX_POINTER_CHARS = 512
MAX_POINTER_TOKENS = 16
#: The only path a patch may not change (the version is assigned when a proposal is applied).
VERSION_PATH = "/version"
PATCH_OPS = ("add", "replace", "remove", "test")


class PatchErrorCode(enum.Enum):
    """Why a patch cannot be applied: ``MALFORMED`` (not a valid operation or pointer, too many
    operations), ``UNKNOWN_PATH`` (a pointer names no member of the manifest), ``TEST_FAILED``
    (a ``test`` operation found another value), ``INVALID_VALUE`` (the result is not a valid
    manifest: wrong type or out-of-bounds parameter), ``FORBIDDEN_PATH`` (``/version`` or the
    whole document), ``CONFLICT`` (``merge_manifest_patches``: two patches disagree)."""

    MALFORMED = "MALFORMED"
    UNKNOWN_PATH = "UNKNOWN_PATH"
    TEST_FAILED = "TEST_FAILED"
    INVALID_VALUE = "INVALID_VALUE"
    FORBIDDEN_PATH = "FORBIDDEN_PATH"
    CONFLICT = "CONFLICT"


class PatchError(Exception):
    """A patch that cannot be applied: ``code`` (``PatchErrorCode``) and a ``message`` naming the
    operation and the path."""

    def __init__(self, code: PatchErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class Conflict(msgspec.Struct, frozen=True):
    """Patch ``patch_index`` (0-based) changes ``path``, which patch ``winner_index`` (earlier, so
    it wins) also changes, or encloses, to another result; ``patch_index`` was left out."""

    patch_index: int
    winner_index: int
    path: str
    reason: str


_MISSING = object()


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """Return the JSON form of ``manifest`` (``msgspec.to_builtins``: a fresh dict of plain
    values; see the module docstring)."""
    out: dict[str, Any] = msgspec.to_builtins(manifest)
    return out


def escape_token(token: str) -> str:
    """Return ``token`` escaped for a JSON Pointer (RFC 6901 §3: ``~`` → ``~0``, ``/`` → ``~1``)."""
    return token.replace("~", "~0").replace("/", "~1")


def parse_pointer(pointer: str) -> list[str]:
    """Return the reference tokens of JSON Pointer ``pointer`` (RFC 6901 §3-4: ``""`` is the whole
    document, else ``/``-separated tokens with ``~1`` → ``/`` then ``~0`` → ``~``). Raises
    PatchError(MALFORMED) for a pointer not starting with ``/``, a bad ``~`` escape, or one over
    MAX_POINTER_CHARS characters or MAX_POINTER_TOKENS tokens."""
    if not isinstance(pointer, str) or len(pointer) > MAX_POINTER_CHARS:
        raise PatchError(PatchErrorCode.MALFORMED, f"path must be a JSON Pointer of at most {MAX_POINTER_CHARS} characters")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(PatchErrorCode.MALFORMED, f"path {pointer[:80]!r} must be '' or start with '/' (RFC 6901)")
    tokens = pointer[1:].split("/")
    if len(tokens) > MAX_POINTER_TOKENS:
        raise PatchError(PatchErrorCode.MALFORMED, f"path {pointer[:80]!r} has more than {MAX_POINTER_TOKENS} tokens")
    out = []
    for token in tokens:
        rest = token.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise PatchError(PatchErrorCode.MALFORMED, f"path {pointer[:80]!r}: '~' must be followed by 0 or 1 (RFC 6901)")
        out.append(token.replace("~1", "/").replace("~0", "~"))
    return out


def json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 §4.6 equality of two JSON values: same type (a boolean is not a number), arrays
    element by element, objects member by member regardless of order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _index(container: list[Any], token: str, pointer: str, *, append: bool) -> int:
    """The array index ``token`` names (RFC 6901 §4: digits without a leading zero; ``-`` is the
    end of the array, only for ``add``)."""
    if append and token == "-":
        return len(container)
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(PatchErrorCode.UNKNOWN_PATH, f"{pointer[:80]!r}: {token[:20]!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not append):
        raise PatchError(PatchErrorCode.UNKNOWN_PATH, f"{pointer[:80]!r}: index {i} is past the array's end ({len(container)})")
    return i


def _parent(doc: Any, tokens: list[str], pointer: str) -> Any:
    """The container that holds the last token of ``tokens``."""
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(PatchErrorCode.UNKNOWN_PATH, f"{pointer[:80]!r}: the manifest has no member {token[:40]!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, pointer, append=False)]
        else:
            raise PatchError(PatchErrorCode.UNKNOWN_PATH, f"{pointer[:80]!r}: {token[:40]!r} is below a value, not an object or array")
    if not isinstance(node, (dict, list)):
        raise PatchError(PatchErrorCode.UNKNOWN_PATH, f"{pointer[:80]!r}: the parent is a value, not an object or array")
    return node


def resolve(doc: Any, pointer: str) -> Any:
    """Return the value ``pointer`` names in JSON document ``doc``. Raises PatchError
    (MALFORMED, UNKNOWN_PATH)."""
    tokens = parse_pointer(pointer)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(PatchErrorCode.UNKNOWN_PATH, f"{pointer[:80]!r}: the manifest has no member {last[:40]!r}")
        return parent[last]
    return parent[_index(parent, last, pointer, append=False)]


def _json_value(op: PatchOp) -> Any:
    try:
        return msgspec.to_builtins(op.value)
    except (TypeError, ValueError) as exc:
        raise PatchError(PatchErrorCode.INVALID_VALUE, f"{op.op} {op.path[:80]!r}: the value is not JSON: {exc}") from None


def _apply_op(doc: dict[str, Any], op: PatchOp) -> None:
    """Apply one operation to ``doc`` in place (RFC 6902 §4.1-4.4, §4.6)."""
    if not isinstance(op, PatchOp) or op.op not in PATCH_OPS:
        name = getattr(op, "op", op)
        raise PatchError(PatchErrorCode.MALFORMED, f"unknown operation {str(name)[:40]!r}; use one of {list(PATCH_OPS)}")
    tokens = parse_pointer(op.path)
    if op.op == "test":
        if not json_equal(resolve(doc, op.path), _json_value(op)):
            raise PatchError(PatchErrorCode.TEST_FAILED, f"test {op.path[:80]!r}: the manifest holds another value")
        return
    if not tokens:
        raise PatchError(PatchErrorCode.FORBIDDEN_PATH, f"{op.op} of the whole manifest; use propose_manifest_update")
    if op.path == VERSION_PATH:
        raise PatchError(PatchErrorCode.FORBIDDEN_PATH, f"{op.op} {VERSION_PATH}: the version is set when a proposal is applied")
    parent = _parent(doc, tokens, op.path)
    last = tokens[-1]
    if op.op == "remove":
        resolve(doc, op.path)  # UNKNOWN_PATH when absent
        if isinstance(parent, dict):
            del parent[last]
        else:
            del parent[_index(parent, last, op.path, append=False)]
        return
    value = _json_value(op)
    if isinstance(parent, dict):
        if op.op == "replace" and last not in parent:
            raise PatchError(PatchErrorCode.UNKNOWN_PATH, f"replace {op.path[:80]!r}: the manifest has no member {last[:40]!r}")
        parent[last] = value
    elif op.op == "add":
        parent.insert(_index(parent, last, op.path, append=True), value)
    else:
        parent[_index(parent, last, op.path, append=False)] = value


def decode_manifest(doc: Any) -> Manifest:
    """Return the ``Manifest`` of JSON form ``doc`` (msgspec, strict types) with its sections
    checked (``validate``). Raises PatchError: UNKNOWN_PATH for a member the manifest does not
    have, INVALID_VALUE for a wrong type or an out-of-bounds value."""
    try:
        manifest = msgspec.convert(doc, Manifest, strict=True)
    except msgspec.ValidationError as exc:
        code = PatchErrorCode.UNKNOWN_PATH if "unknown field" in str(exc) else PatchErrorCode.INVALID_VALUE
        raise PatchError(code, f"the patched manifest is not valid: {exc}") from None
    try:
        check_world_params(manifest.params)
        check_section(manifest.staking, "staking")
        check_section(manifest.governance, "governance")
    except ValueError as exc:
        raise PatchError(PatchErrorCode.INVALID_VALUE, str(exc)) from None
    return manifest


def apply_patch(manifest: Manifest, ops: list[PatchOp]) -> Manifest:
    """Return ``manifest`` with JSON Patch ``ops`` applied in order (RFC 6902: ``add``,
    ``replace``, ``remove``, ``test``; paths are RFC 6901 pointers into ``manifest_json``), as a
    new ``Manifest`` with the same ``version``. Atomic: the input is never changed.

    Raises PatchError: MALFORMED (more than MAX_PATCH_OPS operations, an unknown op, a bad
    pointer), UNKNOWN_PATH, TEST_FAILED, FORBIDDEN_PATH (``/version``, or the whole document
    for add/replace/remove), INVALID_VALUE (see ``decode_manifest``)."""
    if not isinstance(ops, list) or len(ops) > MAX_PATCH_OPS:
        raise PatchError(PatchErrorCode.MALFORMED, f"a patch is a list of at most {MAX_PATCH_OPS} operations")
    doc = manifest_json(manifest)
    for op in ops:
        _apply_op(doc, op)
    result = decode_manifest(doc)
    missing = _missing_member(doc, manifest_json(result), "")
    if missing is not None:
        raise PatchError(PatchErrorCode.INVALID_VALUE,
                         f"{missing[:80]!r} is a member every manifest has; replace its value instead of removing it")
    return result


def _missing_member(doc: Any, canonical: Any, path: str) -> str | None:
    """The first member the decoded manifest's JSON form has that the patched document lacks (a
    removed field msgspec would silently restore to its default), or None."""
    if isinstance(doc, dict) and isinstance(canonical, dict):
        for key in sorted(canonical):
            sub = f"{path}/{escape_token(key)}"
            if key not in doc:
                return sub
            found = _missing_member(doc[key], canonical[key], sub)
            if found is not None:
                return found
    elif isinstance(doc, list) and isinstance(canonical, list):
        for i, (a, b) in enumerate(zip(doc, canonical, strict=False)):
            found = _missing_member(a, b, f"{path}/{i}")
            if found is not None:
                return found
    return None


def _diff(base: Any, target: Any, path: str, out: list[PatchOp]) -> None:
    if isinstance(base, dict) and isinstance(target, dict):
        for key in sorted(base.keys() | target.keys()):
            sub = f"{path}/{escape_token(key)}"
            if key not in target:
                out.append(PatchOp(op="remove", path=sub))
            elif key not in base:
                out.append(PatchOp(op="add", path=sub, value=target[key]))
            else:
                _diff(base[key], target[key], sub, out)
        return
    if isinstance(base, list) and isinstance(target, list):
        common = min(len(base), len(target))
        for i in range(common):
            _diff(base[i], target[i], f"{path}/{i}", out)
        for i in range(common, len(target)):
            out.append(PatchOp(op="add", path=f"{path}/{i}", value=target[i]))
        for i in reversed(range(common, len(base))):
            out.append(PatchOp(op="remove", path=f"{path}/{i}"))
        return
    if not json_equal(base, target):
        out.append(PatchOp(op="replace", path=path, value=target))


def diff_manifest(base: Manifest, target: Manifest) -> list[PatchOp]:
    """Return the fewest operations that turn ``base`` into ``target``, the version aside:
    ``apply_patch(base, diff_manifest(base, target))`` equals ``target`` with ``base``'s version.
    Objects are compared member by member (sorted keys: ``add`` for a new member, ``remove`` for a
    gone one), arrays element by element (then ``add`` of the extra elements in ascending index
    order, or ``remove`` of the missing ones from the end), and a changed value is a ``replace``.
    Deterministic: the same pair always gives the same list."""
    a, b = manifest_json(base), manifest_json(target)
    a.pop("version", None)
    b.pop("version", None)
    out: list[PatchOp] = []
    _diff(a, b, "", out)
    return out


def paths_overlap(a: str, b: str) -> bool:
    """True when JSON Pointers ``a`` and ``b`` are equal or one encloses the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _value_at(doc: Any, pointer: str) -> Any:
    try:
        return resolve(doc, pointer)
    except PatchError:
        return _MISSING


def merge_manifest_patches_with_conflicts(base: Manifest,
                                          patches: list[list[PatchOp]]) -> tuple[Manifest, list[Conflict]]:
    """Merge ``patches``, each written against ``base``, into one manifest: each patch is first
    applied alone to ``base`` and reduced to its effect (``diff_manifest``); in order, a patch is
    kept unless one of its changed paths equals or encloses (or is enclosed by) a path a kept
    earlier patch changes and the two results differ there (the value at the enclosing path), or
    its effect no longer applies after the kept ones. A left-out patch is a ``Conflict`` (the first
    wins). Returns ``(merged manifest with base's version, conflicts in patch order)``.

    Raises PatchError when a patch cannot be applied to ``base`` alone (see ``apply_patch``)."""
    kept: list[tuple[int, dict[str, Any], list[PatchOp]]] = []
    conflicts: list[Conflict] = []
    merged = base
    for index, patch in enumerate(patches):
        alone = apply_patch(base, patch)
        effect = diff_manifest(base, alone)
        doc = manifest_json(alone)
        clash = None
        for winner, winner_doc, winner_effect in kept:
            for mine in effect:
                for theirs in winner_effect:
                    if not paths_overlap(mine.path, theirs.path):
                        continue
                    outer = mine.path if len(mine.path) <= len(theirs.path) else theirs.path
                    if not json_equal(_value_at(doc, outer), _value_at(winner_doc, outer)):
                        clash = Conflict(index, winner, outer, f"patches {winner} and {index} set {outer!r} differently")
                        break
                if clash:
                    break
            if clash:
                break
        if clash is None:
            try:
                merged = apply_patch(merged, [op for op in effect if not _already(merged, op)])
            except PatchError as exc:
                clash = Conflict(index, kept[-1][0] if kept else index, effect[0].path if effect else "",
                                 f"patch {index} no longer applies after the earlier patches: {exc.message}")
        if clash is None:
            kept.append((index, doc, effect))
        else:
            conflicts.append(clash)
    return merged, conflicts


def _already(manifest: Manifest, op: PatchOp) -> bool:
    """True when ``op`` (from a diff) is already in effect in ``manifest`` (an earlier patch made the
    same change), so applying it again would be wrong (an ``add`` into an array would insert twice)."""
    doc = manifest_json(manifest)
    current = _value_at(doc, op.path)
    if op.op == "remove":
        return current is _MISSING
    return current is not _MISSING and json_equal(current, msgspec.to_builtins(op.value))


def merge_manifest_patches(base: Manifest, patches: list[list[PatchOp]]) -> Manifest:
    """Return ``base`` with all ``patches`` (each written against ``base``) merged, as
    ``merge_manifest_patches_with_conflicts`` does. Raises PatchError(CONFLICT) naming the first
    conflict instead of leaving a patch out, and PatchError for a patch that does not apply."""
    merged, conflicts = merge_manifest_patches_with_conflicts(base, patches)
    if conflicts:
        c = conflicts[0]
        raise PatchError(PatchErrorCode.CONFLICT, f"{c.reason} (patch {c.patch_index} at {c.path!r})")
    return merged


def propose_module_changes(changes: ModuleChangeSet) -> list[PatchOp]:
    """Return the patch that sets the manifest's module changes to ``changes``: one ``replace`` of
    ``/module_changes`` with its JSON form (for ``propose_manifest_patch``)."""
    return [PatchOp(op="replace", path="/module_changes", value=msgspec.to_builtins(changes))]
