"""Entry point of the frozen Keyless app.

One executable serves two roles: the desktop app / CLI, and (with
``--agent-worker`` as the first argument) the untrusted agent process, which
the host starts as a child of itself. A frozen app cannot run ``python -m``,
so the dispatch happens here on argv.
"""

from __future__ import annotations

import multiprocessing
import sys


def _main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--agent-worker":
        from agent.worker import main as worker_main

        return int(worker_main(sys.argv[2:]) or 0)
    from app.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(_main())
