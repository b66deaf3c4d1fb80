"""``python -m wadm.emulator``: run the exchange emulator standalone."""

from __future__ import annotations

import argparse
import logging

from wadm.emulator.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, configure logging and run the emulator."""
    parser = argparse.ArgumentParser(
        prog="python -m wadm.emulator",
        description="Loopback Binance/Bybit exchange emulator: synthetic markets, replay, fault injection.",
    )
    add_arguments(parser)
    parser.add_argument("--log-level", default="WARNING", help="logging level (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
