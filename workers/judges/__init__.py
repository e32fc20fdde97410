"""Judges: score a group of K responses to one prompt (scalars and/or a KxK win matrix)."""
