"""Trade-off Explorer web app: ``python app.py [--manifest M] [--port P] [--auth USER:PASS] ...``.

Serves on 127.0.0.1 by default; ``--share`` only when asked. See ``python app.py --help``.
"""
from __future__ import annotations

import argparse
import logging

from explorer.serve_args import add_serve_args


def main(argv: list[str] | None = None) -> None:
    parser = add_serve_args(argparse.ArgumentParser(description="Trade-off Explorer web app"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from explorer.ui import launch

    launch(args)


if __name__ == "__main__":
    main()
