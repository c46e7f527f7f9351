"""A static check of module sources that refuses the constructs which read files outside the
package or the build environment: it gives every validator the same answer whether or not it has a
real sandbox (``hermetic``), so a refused package is INVALID_PACKAGE everywhere.

Rules (every file of the package is checked with the toolchain's rules, since any file may be
included):

- C: after splicing backslash-newlines and mapping the digraph ``%:`` and trigraph ``??=`` to
  ``#``, every ``#include`` / ``#include_next`` / ``#import`` / ``#embed`` directive and every
  ``__has_include`` / ``__has_include_next`` / ``__has_embed`` must name a literal ``"path"`` or
  ``<path>`` that is relative and has no ``..`` segment (no macro-computed names); ``incbin``
  (assembler file inclusion) must not appear.
- Rust: ``include!``, ``include_str!``, ``include_bytes!`` and ``#[path = ...]`` must take one
  plain string literal that is relative without ``..``; ``env!`` and ``option_env!`` (they read
  the build environment, whose paths differ between sandboxed and unsandboxed builds) and renaming
  those macros (``use core::include_str as x``) or invoking a macro through a metavariable
  (``$m!(...)``) are refused; ``incbin`` must not appear.

This check is defence in depth and determinism, not the isolation: clever macro tricks that it
misses are stopped by the sandbox (``bwrap``), and without a sandbox by nothing (see
``hermetic``).
"""

from __future__ import annotations

import re

_C_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*(include_next|include|import|embed)\b(.*)$", re.MULTILINE)
_C_HAS = re.compile(r"\b(__has_include_next|__has_include|__has_embed)\b\s*(\(?)\s*([^)\n]*)")
_C_LITERAL = re.compile(r'^\s*(?:"([^"\n]*)"|<([^>\n]*)>)\s*(?:(?://|/\*).*)?$')
_C_HAS_LITERAL = re.compile(r'^(?:"([^"\n]*)"|<([^>\n]*)>)')
_RS_INCLUDE = re.compile(r"\b(include_bytes|include_str|include)\s*!\s*([\(\[\{])")
_RS_PATH_ATTR = re.compile(r"#\s*!?\s*\[\s*path\b")
_RS_PATH_ATTR_LITERAL = re.compile(r'#\s*!?\s*\[\s*path\s*=\s*"([^"\\\n]*)"\s*\]')
_RS_ENV = re.compile(r"\b(option_env|env)\s*!")
_RS_RENAME = re.compile(r"\b(include_bytes|include_str|include|option_env|env)\s+as\b")
_RS_STRING_ARG = re.compile(r'\s*"([^"\\\n]*)"\s*,?\s*([\)\]\}])')
_RS_META_MACRO = re.compile(r"\$\s*[A-Za-z_][A-Za-z0-9_]*\s*!")
_INCBIN = re.compile(r"incbin", re.IGNORECASE)


class ForbiddenSource(ValueError):
    """A source uses a refused construct; the message names the file, line and rule."""


def _safe_relative(path: str) -> bool:
    if not path or path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        return False
    return all(seg not in ("..",) for seg in path.split("/"))


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def check_c_source(path: str, text: str) -> None:
    """Raise ForbiddenSource if ``text`` (the file ``path``) breaks the C rules above."""
    spliced = re.sub(r"\\\r?\n", "", text).replace("%:", "#").replace("??=", "#")
    if _INCBIN.search(spliced):
        raise ForbiddenSource(f"{path}: 'incbin' (assembler file inclusion) is not allowed")
    for m in _C_DIRECTIVE.finditer(spliced):
        lit = _C_LITERAL.match(m.group(2))
        name = (lit.group(1) if lit.group(1) is not None else lit.group(2)) if lit else None
        if name is None or not _safe_relative(name):
            raise ForbiddenSource(
                f"{path}: line ~{_line(spliced, m.start())}: #{m.group(1)} must name a literal relative path inside the "
                f"package (\"file.h\"), without '..' or a macro; got {m.group(2).strip()[:80]!r}"
            )
    for m in _C_HAS.finditer(spliced):
        lit = _C_HAS_LITERAL.match(m.group(3)) if m.group(2) else None
        name = (lit.group(1) if lit.group(1) is not None else lit.group(2)) if lit else None
        if name is None or not _safe_relative(name):
            raise ForbiddenSource(
                f"{path}: line ~{_line(spliced, m.start())}: {m.group(1)} must name a literal relative path without '..'"
            )


def check_rust_source(path: str, text: str) -> None:
    """Raise ForbiddenSource if ``text`` (the file ``path``) breaks the Rust rules above."""
    if _INCBIN.search(text):
        raise ForbiddenSource(f"{path}: 'incbin' (assembler file inclusion) is not allowed")
    m = _RS_ENV.search(text)
    if m:
        raise ForbiddenSource(f"{path}: line {_line(text, m.start())}: {m.group(1)}! reads the build environment; "
                              "it is not allowed in module sources")
    m = _RS_META_MACRO.search(text)
    if m:
        raise ForbiddenSource(f"{path}: line {_line(text, m.start())}: invoking a macro through a macro_rules metavariable "
                              "($name!) is not allowed")
    m = _RS_RENAME.search(text)
    if m:
        raise ForbiddenSource(f"{path}: line {_line(text, m.start())}: renaming {m.group(1)} is not allowed")
    for m in _RS_INCLUDE.finditer(text):
        arg = _RS_STRING_ARG.match(text, m.end())
        closing = {"(": ")", "[": "]", "{": "}"}[m.group(2)]
        if arg is None or arg.group(2) != closing or not _safe_relative(arg.group(1)):
            raise ForbiddenSource(
                f"{path}: line {_line(text, m.start())}: {m.group(1)}! must take one plain string literal naming a "
                "relative path inside the package, without '..'"
            )
    for m in _RS_PATH_ATTR.finditer(text):
        lit = _RS_PATH_ATTR_LITERAL.match(text, m.start())
        if lit is None or not _safe_relative(lit.group(1)):
            raise ForbiddenSource(
                f"{path}: line {_line(text, m.start())}: #[path = ...] must be a plain relative path without '..'"
            )


def check_package_sources(files: dict[str, str], toolchain_name: str) -> None:
    """Check every file of ``files`` (path -> text) with the rules of ``toolchain_name``
    (``"c"`` or ``"rust"``). Raises ForbiddenSource for the first violation (files in sorted order,
    so the message is the same on every machine)."""
    check = check_c_source if toolchain_name == "c" else check_rust_source
    for path in sorted(files):
        check(path, files[path])
