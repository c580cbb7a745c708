"""A short fuzz run under ASan + UBSan (fuzz/run.py; `make fuzz` is the long one).

The sanitized libraries are built into build/sanitized/ when missing or stale (about two
minutes on 2 cores, then cached), the seed models into build/fuzz/models/. The run goes in a
subprocess: a few hundred random cases for the TF ops and _native, every regression model
and a few hundred mutated flatbuffers through the delegate. Any sanitizer report from
tfquant's code, crash not inside LiteRT itself, mismatch with the reference or harness error
fails the test.
"""

import json
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_fuzz_run_is_clean(tmp_path):
    report = tmp_path / "fuzz.json"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "fuzz", "run.py"), "--op-cases", "150",
         "--delegate-cases", "300", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    tail = done.stdout[-4000:] + done.stderr[-2000:]
    assert report.exists(), tail
    result = json.loads(report.read_text())
    assert result["sanitizer_reports_tfquant"] == 0, tail
    assert result["mismatch_count"] == 0, json.dumps(result["mismatches"][:3])[:3000]
    assert not result["harness_errors"], result["harness_errors"][0]["stderr"][-3000:]
    assert all(c["blame"] == "litert" for c in result["crashes"]), result["crashes"]
    assert done.returncode == 0, tail
    calls = result["calls"]
    for entry in ("native.fake_quant_reference", "native.fake_quant_grad_reference",
                  "tf.fake_quant", "tf.fake_quant_grad", "native.packed_matmul",
                  "tf.packed_matmul", "tf.pack_weights", "native.unpack_weights",
                  "tf.moving_average_range", "tf.seer_conv2d"):
        assert calls.get(entry, 0) > 0, entry
    delegate = result["delegate"]
    assert delegate["valid_models_claimed"] == delegate["valid_models"] > 0
    assert delegate["mutated_models"] >= 250 and delegate["regression_models"] > 0
