"""Recipes: turn judged groups into training pairs and fix the reference-policy schedule (pure functions)."""
