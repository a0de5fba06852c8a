"""``python -m agent.worker``: run the agent process (see :mod:`agent.worker.main`)."""

from __future__ import annotations

import logging
import os
import sys

from agent.worker.main import main

if __name__ == "__main__":
    status = main()
    logging.shutdown()
    sys.stderr.flush()
    # The reader thread may still be blocked reading stdin; a normal interpreter
    # exit would then abort on the buffered reader's lock (SIGABRT), so leave now.
    os._exit(status)
