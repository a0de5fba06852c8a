"""Entry point of the frozen Keyless app.

One executable serves three roles: the desktop app / CLI; with
``--agent-worker`` first, the untrusted agent process; with
``--model-server`` first, the child that runs a model for the host
(``models.process``). The host starts both as children of itself; a
frozen app cannot run ``python -m``, so the dispatch happens here on argv.
"""

from __future__ import annotations

import multiprocessing
import sys


def _main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--agent-worker":
        from agent.worker.main import main as worker_main

        return int(worker_main(sys.argv[2:]) or 0)
    if len(sys.argv) > 1 and sys.argv[1] == "--model-server":
        from models.serve import main as serve_main

        return serve_main(sys.argv[2:])
    from app.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(_main())
