"""Runs every benchmark script (what `make bench` does); each writes BENCHMARKS.md."""

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    failed = []
    # bench_*.py, and the PTQ evidence runs ptq_*.py (ptq_common.py is their helper).
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py"))) + sorted(
        s for s in glob.glob(os.path.join(HERE, "ptq_*.py")) if not s.endswith("_common.py"))
    # The model zoo and keras.applications coverage (the longest runs, last).
    commands = [[s] for s in scripts]
    commands += [[os.path.join(HERE, "applications_coverage.py")],
                 [os.path.join(HERE, "model_zoo.py")],
                 [os.path.join(HERE, "integer_exact.py")]]
    # Then the integer-exact check of the models model_zoo.py trained and cached.
    commands.append([os.path.join(HERE, "integer_exact.py"), "--test", "2000", "--zoo", "all"])
    for command in commands:
        print(f"== {' '.join(os.path.basename(a) for a in command)}", flush=True)
        if subprocess.call([sys.executable, *command]) != 0:
            failed.append(os.path.basename(command[0]))
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")
