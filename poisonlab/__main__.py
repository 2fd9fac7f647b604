"""``python -m poisonlab``: the same application as the ``poisonlab`` command."""

from poisonlab.cli.app import main

main()
