"""Runs every benchmark script (what `make bench` does); each writes BENCHMARKS.md."""

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    failed = []
    for script in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        print(f"== {os.path.basename(script)}", flush=True)
        if subprocess.call([sys.executable, script]) != 0:
            failed.append(os.path.basename(script))
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")
