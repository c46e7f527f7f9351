"""Proof of stake in the world: validators, bonds, unbonding, the validator set of each epoch,
slashing and jailing (docs/staking.md)."""
