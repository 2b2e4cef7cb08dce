"""Subcommands of the ``dim-ssl`` command line, one module each.

Every module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""
