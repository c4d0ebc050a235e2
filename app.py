"""Trade-off Explorer web app: ``python app.py [--manifest M] [--port P] [--auth USER:PASS] ...``.

Serves on 127.0.0.1 by default; ``--share`` only when asked; ``--ray [ADDRESS]`` runs sweeps on
Ray actors. See ``python app.py --help``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from explorer.app.flags import add_serve_args


def main(argv: list[str] | None = None) -> int:
    parser = add_serve_args(argparse.ArgumentParser(description="Trade-off Explorer web app"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from explorer.executors import ExecutorError
    from explorer.ui import launch

    try:
        launch(args)
    # A bad manifest or flag value, Ray missing or unreachable: one line, no traceback.
    except (ExecutorError, ValueError, KeyError, OSError) as exc:
        from explorer.core.errors import message_of
        print(f"error: {message_of(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
