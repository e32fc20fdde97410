"""sparring.shared: config, record schemas, the Redis Streams queue, run store, model loading, the task registry.

Imports neither `sparring.workers` nor `sparring.services`.
"""
