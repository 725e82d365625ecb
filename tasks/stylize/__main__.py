"""``python -m tasks.stylize``: train (``--help`` lists every config key), or ``apply`` a trained network."""
import sys

from ..common.cli import main
from .task import TASK

sys.exit(main(TASK))
