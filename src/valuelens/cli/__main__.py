"""``python -m valuelens.cli …`` is the ``valuelens`` command."""

from . import main

main()
