"""``python -m mdmgen`` runs the command line."""

from .cli import main

main()
