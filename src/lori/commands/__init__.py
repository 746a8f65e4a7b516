"""One module per ``lori`` command, each with ``HELP``, ``add_arguments(parser)`` and ``run(args)``; ``lori.cli``
holds the table of them. A command imports the library, never another command (tests/unit/test_layers.py)."""
