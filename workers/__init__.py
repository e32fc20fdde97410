"""sparring.workers: the Ray actors of a run (generation, judges, trainer, controller) and the math they use.

Imports `sparring.shared`, never `sparring.services`.
"""
