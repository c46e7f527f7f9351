"""Every structured log event the packages emit is a snake_case name (``block_committed``, not
"block committed"): log lines are searched and counted by event, and one naming rule keeps that
possible. Found by reading the source (``ast``), so a new log call cannot slip through."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def log_events() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(ROOT.glob("agent_world_*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS):
                continue
            base = node.func.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if "log" in name.lower() and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((str(path.relative_to(ROOT)), node.lineno, node.args[0].value))
    return found


def test_log_event_names_are_snake_case():
    events = log_events()
    assert len(events) > 100, "the scan found too few log calls to be looking at the right thing"
    bad = [e for e in events if not re.fullmatch(r"[a-z][a-z0-9_]*", e[2])]
    assert not bad, f"log events that are not snake_case: {bad}"
