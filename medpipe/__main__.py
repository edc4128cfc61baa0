"""``python -m medpipe`` is the ``medpipe`` command."""

from medpipe.cli import main

main()
