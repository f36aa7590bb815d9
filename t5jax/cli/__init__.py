"""The `t5jax` command: parses flags and gin, then calls train/, decode/, interop/.

May import any stage; nothing imports it.
"""
