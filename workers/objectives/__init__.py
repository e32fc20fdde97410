"""Objectives: losses over per-sequence log-probs, registered by name."""
