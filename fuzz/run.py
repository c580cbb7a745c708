"""Fuzzes tfquant's C++ entry points under ASan + UBSan and reports what happened.

    python fuzz/run.py --op-cases 200 --delegate-cases 300        # the short run
    make fuzz                                                      # the full run

Builds the sanitized libraries if needed (fuzz/build_sanitized.py) and the seed models
(fuzz/models.py), then runs fuzz children one after another under the sanitizers:
fuzz/fuzz_ops.py in shards (TF intra-op threads 1, 2, 4 in turn) and fuzz/fuzz_delegate.py
in batches; a delegate child that dies is restarted after the case it died in. Every
sanitizer report is attributed (tfquant's code or not, from its stack). Exit status 1 on
a report from tfquant's code, a crash not attributed to LiteRT, a mismatch, or a harness
error. --json writes the figures.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fuzz import build_sanitized, sanitized  # noqa: E402
from fuzz import models as seed_models  # noqa: E402

ROOT = sanitized.ROOT
MODELS = os.path.join(ROOT, "build", "fuzz", "models")
CRASHES = os.path.join(ROOT, "build", "fuzz", "crashes")
THREADS = (1, 2, 4)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def child(script, args, timeout):
    command = [sys.executable, os.path.join(ROOT, "fuzz", script)] + [str(a) for a in args]
    try:
        done = subprocess.run(command, cwd=ROOT, env=sanitized.child_env(), capture_output=True,
                              text=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
        err = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr
        return "timeout", out or "", (err or "") + "\n[timeout]"


class Summary:
    def __init__(self):
        self.calls = collections.Counter()
        self.delegate = collections.Counter()
        self.labels = collections.Counter()
        self.reports, self.crashes, self.mismatches, self.harness = [], [], [], []
        self.seconds = {}
        self.expected_errors = 0

    def failure(self, kind, where, returncode, stderr):
        """Records a child that did not finish; its sanitizer reports decide the blame."""
        reports = sanitized.sanitizer_reports(stderr)
        for report in reports:
            self.reports.append(dict(report, where=where))
        ours = any(r["ours"] for r in reports)
        if not reports and "Traceback (most recent call last)" in stderr:
            self.harness.append({"where": where, "stderr": stderr[-3000:]})
            return
        blame = "tfquant" if ours else ("litert" if reports else "unknown")
        self.crashes.append({"kind": kind, "where": where, "returncode": returncode,
                             "blame": blame, "stderr": "" if reports else stderr[-2000:]})

    def failed(self):
        return bool([r for r in self.reports if r["ours"]] or self.mismatches or self.harness
                    or [c for c in self.crashes if c["blame"] != "litert"])

    def as_dict(self):
        return {"calls": dict(sorted(self.calls.items())), "delegate": dict(self.delegate),
                "mutation_labels": dict(self.labels), "seconds": self.seconds,
                "sanitizer_reports": len(self.reports),
                "sanitizer_reports_tfquant": sum(r["ours"] for r in self.reports),
                "crashes": self.crashes, "mismatches": self.mismatches[:50],
                "mismatch_count": len(self.mismatches), "harness_errors": self.harness,
                "expected_errors": self.expected_errors,
                "reports": self.reports[:20], "failed": self.failed()}


def fuzz_ops(summary, cases, shard, seed):
    for s, start in enumerate(range(0, cases, shard)):
        count = min(shard, cases - start)
        threads = THREADS[s % len(THREADS)]
        where = f"fuzz_ops --seed {seed * 1000 + s} --cases {count} --threads {threads}"
        code, out, err = child("fuzz_ops.py", ["--cases", count, "--seed", seed * 1000 + s,
                                               "--threads", threads], timeout=1800)
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if code != 0 or not lines:
            summary.failure("fuzz_ops", where, code, err)
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        summary.calls.update(result["calls"])
        summary.mismatches += [dict(m, where=where) for m in result["mismatches"]]
        summary.mismatches += [{"where": where, "what": "more mismatches"}] * max(
            0, result["mismatch_count"] - len(result["mismatches"]))
        summary.expected_errors += result["expected_errors"]


def fuzz_delegate(summary, cases, batch, seed, models_json, regressions=False):
    """Random cases 0..cases-1, or (regressions) all of fuzz/regressions.py's."""
    start = 0
    extra = ["--regressions"] if regressions else []
    while start < cases:
        count = min(batch, cases - start)
        code, out, err = child("fuzz_delegate.py", ["--models", models_json, "--start", start,
                                                    "--count", count, "--seed", seed] + extra,
                               timeout=3600)
        last, done = None, start
        for line in out.splitlines():
            if line.startswith("CASE "):
                last = line.split()[1:]
            elif line.startswith("DONE "):
                record = json.loads(line[5:])
                done = record["case"] + 1
                add_delegate_record(summary, record)
        if code == 0 and (done == start + count or regressions):
            if regressions:
                return
            start = done
            continue
        # Died in case `last`; blame it from the stack and go on after it.
        case = int(last[0]) if last else done
        phase = last[1] if last else "start-up"
        where = (f"fuzz_delegate --seed {seed} --start {case} --count 1 {' '.join(extra)} "
                 f"({phase} interpreter)")
        summary.failure("delegate", where, code, err)
        if last is None:  # before any case: the next start would die the same way
            return
        if phase == "delegate" and not regressions:  # does LiteRT die without it too?
            alone, _, _ = child("fuzz_delegate.py", ["--models", models_json, "--start", case,
                                                     "--count", 1, "--seed", seed,
                                                     "--builtin-only"], timeout=600)
            summary.crashes[-1]["crashes_without_delegate"] = alone != 0
        summary.delegate["crashed_cases"] += 1
        summary.calls["delegate.interpreters"] += 1
        start = case + 1


def add_delegate_record(summary, record):
    kind = "regression" if "regression" in record else (
        "valid" if record["valid"] else "mutated")
    summary.delegate[f"{kind}_models"] += 1
    summary.delegate[f"{kind}_{record['outcome']}"] += 1
    summary.delegate["claimed_nodes"] += record["claimed"]
    summary.delegate[f"{kind}_models_claimed"] += record["claimed"] > 0
    summary.calls["delegate.interpreters"] += 1
    if record["outcome"] == "ran" and record["claimed"]:
        summary.calls["delegate.invokes"] += 1
    summary.labels.update(record["changed"])
    if "mismatch" in record:
        summary.mismatches.append(record)


def print_summary(summary):
    d = summary.as_dict()
    print("\ncalls per entry point:")
    for name, count in d["calls"].items():
        print(f"  {name:36s} {count:8d}")
    print(f"  {'total':36s} {sum(d['calls'].values()):8d}")
    print("delegate:", json.dumps(d["delegate"], sort_keys=True))
    print(f"sanitizer reports: {d['sanitizer_reports']} ({d['sanitizer_reports_tfquant']} in "
          f"tfquant's code); crashes: {len(d['crashes'])} (" + ", ".join(
              f"{k}: {v}" for k, v in collections.Counter(
                  c["blame"] for c in d["crashes"]).items()) + ")")
    print(f"mismatches: {d['mismatch_count']}; harness errors: {len(d['harness_errors'])}")
    print("seconds:", json.dumps(d["seconds"]))
    for report in d["reports"]:
        if report["ours"]:
            print(f"--- {report['where']}\n{report['text']}")
    for crash in d["crashes"]:  # LiteRT's own: one line each
        if crash["blame"] == "litert":
            print(f"--- LiteRT crash: {crash['where']}; without the delegate too: "
                  f"{crash.get('crashes_without_delegate')}")
    for item in (d["mismatches"] + d["harness_errors"])[:5]:
        print("---", json.dumps(item)[:1500])
    print("FAILED" if d["failed"] else "OK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--op-cases", type=int, default=200)
    parser.add_argument("--delegate-cases", type=int, default=300)
    parser.add_argument("--op-shard", type=int, default=400)
    parser.add_argument("--delegate-batch", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    summary = Summary()
    t0 = time.time()
    build_sanitized.build(quiet=True)
    summary.seconds["build"] = round(time.time() - t0, 1)
    models_json = os.path.join(MODELS, "models.json")
    if not os.path.exists(models_json) or set(seed_models.MODELS) - set(
            read_json(models_json)):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", "models.py"), MODELS],
                       cwd=ROOT, env=env, check=True, capture_output=True)
    summary.seconds["models"] = round(time.time() - t0 - summary.seconds["build"], 1)
    t1 = time.time()
    fuzz_ops(summary, args.op_cases, args.op_shard, args.seed)
    summary.seconds["ops"] = round(time.time() - t1, 1)
    t2 = time.time()
    if args.delegate_cases:
        fuzz_delegate(summary, 10 ** 6, 10 ** 6, args.seed, models_json, regressions=True)
    fuzz_delegate(summary, args.delegate_cases, args.delegate_batch, args.seed, models_json)
    summary.seconds["delegate"] = round(time.time() - t2, 1)
    summary.seconds["total"] = round(time.time() - t0, 1)
    print_summary(summary)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary.as_dict(), handle, indent=1)
    return 1 if summary.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
