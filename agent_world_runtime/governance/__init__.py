"""Governance of the world's manifest (docs/governance.md)."""
