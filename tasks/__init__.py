"""sparring.tasks: the task plug-ins that ship with sparring (one package each).

A task brings prompt sources, named models, judges and evaluators (`sparring.shared.tasks.Task`) and is
found through its `sparring.tasks` entry point, never imported by the core. Tasks sit above `workers` in
the dependency order (tasks -> workers -> shared): they build on the core's judges and models.
"""
