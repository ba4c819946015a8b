"""``python -m onnxpq.cli``: the same as the ``onnxpq`` console script."""

import sys

from onnxpq.cli import main

sys.exit(main())
