"""``python -m train.study``: the CLI is ``train.study.cli.main`` (importable there, and as ``train.study.main``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
