"""The engine: the monitor, the executor and what they share.

It depends on the seams in ``_protocols`` and on the package's shared
low-level modules only: never on the native client (``_wire``) nor on a
store implementation.  The package's top (its ``__init__``) hands it the
defaults it cannot import itself.
"""
