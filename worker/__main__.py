"""``python -m worker``: the same as ``xwworker``."""

from worker.cli import main

main()
