"""``python -m core.worker RUN [--resume]``: execute one stored job (started by
:func:`core.runner.start_worker`; not a user command)."""
import sys

from .runner import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
