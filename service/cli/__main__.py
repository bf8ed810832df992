"""``python -m service.cli``: the ``spectral`` command."""

from service.cli import main

main()
