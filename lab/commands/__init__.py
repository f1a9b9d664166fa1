"""Subcommands of the ``lab`` CLI; every module here defines ``register(subparsers)``."""
