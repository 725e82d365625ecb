"""``python -m tasks.detect``: the command line (``--help`` lists every config key)."""
import sys

from ..common.cli import main
from .task import TASK

sys.exit(main(TASK))
