"""Runs the checks of tests/test_concurrency.py N times in a row (default 100) and prints
how many rounds passed and how long they took.

    .venv/bin/python benchmarks/stress_concurrency.py [-n 100] [--no-ops]

One round: the TensorFlow ops on 8 threads (a fresh child process with inter/intra-op
threads 4/2, against a single-threaded reference written once), the delegate on 6
threads (own, shared, created and destroyed interpreters), and the three clean-exit
children. The models are exported once.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import concurrency_checks as checks  # noqa: E402


def one_round(folder, reference, ops=True):
    failures = checks.check_child(["ops", "4", "2", reference]) if ops else []
    failures += checks.check_child(["delegate", folder])
    for mode in checks.EXIT_MODES:
        failures += checks.check_exit(folder, mode)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="rounds (default 100)")
    parser.add_argument("--no-ops", action="store_true",
                        help="skip the TensorFlow ops (the delegate checks alone)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        setup = time.perf_counter()
        checks.export_models(folder)
        reference = os.path.join(folder, "reference.npz")
        assert checks.check_child(["ops", "1", "1", reference, "write"]) == []
        setup = time.perf_counter() - setup
        passed, start = 0, time.perf_counter()
        for i in range(args.n):
            failures = one_round(folder, reference, ops=not args.no_ops)
            passed += not failures
            for failure in failures[:5]:  # the first few say enough
                print(f"round {i + 1}: {failure}", flush=True)
        elapsed = time.perf_counter() - start
    print(f"stress_concurrency: {passed}/{args.n} rounds passed in {elapsed:.1f} s "
          f"({elapsed / max(args.n, 1):.2f} s a round; set-up {setup:.1f} s)")
    return 0 if passed == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
