"""The ``poisonlab`` command line: one module per command group."""
