"""The device mesh, the one table of logical-axis rules, and multi-host start-up.

Part of the ground: imports no other t5jax folder.
"""
