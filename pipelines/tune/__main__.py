"""``python -m pipelines.tune worker SPEC INDEX``: one worker process of ``tune --workers N``."""

import sys

from pipelines.tune.workers import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
