"""sparring.shared: config, record schemas, the Redis Streams queue, run store, model loading, the arena.

Imports neither `sparring.workers` nor `sparring.services`.
"""
