"""``python -m core``: the RobustLab command line."""
import sys

from .cli import main

sys.exit(main())
