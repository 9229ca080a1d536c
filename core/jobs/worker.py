"""``python -m core.jobs.worker RUN [--resume]``: execute one stored job (started by
:func:`core.jobs.runner.start_worker`; not a user command)."""
import sys

from core.jobs.runner import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
