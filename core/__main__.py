"""``python -m core``: the RobustLab command line."""
import sys

from core.app.cli import main

sys.exit(main())
