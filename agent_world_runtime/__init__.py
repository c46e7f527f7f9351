"""Agent World runtime: the deterministic world (no network, no clock).

Same inputs give the same events and the same state root on every machine (DESIGN.md,
"The world runtime").
"""
