"""python -m pop_local: the pop-local command line."""

from pop_local.apps.cli import main

main()
