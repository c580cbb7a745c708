"""Running a test script in a process where tf.keras is Keras 2 (tf_keras), as TFMOT
users run."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_legacy_keras_script(path):
    """Runs the script at `path` with `TF_USE_LEGACY_KERAS=1` (the repository and
    examples/ importable) and returns the JSON its last line of output holds."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "examples")]))
    result = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, timeout=300,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
