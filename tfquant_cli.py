"""The `tfquant` command's entry point. It lives outside the tfquant package so that it
runs before TensorFlow is imported: TensorFlow and LiteRT write their native log lines
straight to file descriptor 2 from C++, some of them while TensorFlow loads and before
any setting can silence them. Unless `--verbose` is given, descriptor 2 goes to
/dev/null and Python's `sys.stderr` keeps the terminal, so tfquant's own messages and
any traceback still reach the user."""

import os
import sys


def main():
    if not any(arg in ("--verbose", "--verbose=true") for arg in sys.argv[1:]):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        terminal = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(terminal, "w", buffering=1)
    from tfquant.cli import run

    run()


if __name__ == "__main__":
    main()
