"""`python benchmarks/run.py ARGS` is `bulkdrive bench ARGS` (see bulkdrive/bench/run.py)."""

import sys

from bulkdrive.bench.run import main

sys.exit(main())
