"""Running Python under the sanitizers, loading the sanitized libraries, reading reports.

A fuzz child is started with `child_env()` (libasan preloaded: TensorFlow, LiteRT and
Python are not instrumented, so the ASan runtime must come first) and, inside, calls
`use_sanitized_tfquant()` before anything imports tfquant.
"""

import ctypes
import glob
import importlib.util
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB_DIR = os.path.join(ROOT, "build", "sanitized", "lib", "tfquant")

# Mutated shapes ask LiteRT for huge arenas: those allocations fail (return null) instead
# of ending the process with an out-of-memory report.
ASAN_OPTIONS = ("detect_leaks=0:handle_abort=1:handle_segv=1:allow_user_segv_handler=0:"
                "allocator_may_return_null=1:max_allocation_size_mb=2048:"
                "symbolize=1:detect_odr_violation=0")
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1"


def _find(name):
    matches = sorted(glob.glob(os.path.join(LIB_DIR, name + "*.so")))
    if not matches:
        raise FileNotFoundError(f"{name}*.so not in {LIB_DIR}: run fuzz/build_sanitized.py")
    return matches[0]


def _gcc_file(name):
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if not os.path.isabs(path):
        raise FileNotFoundError(f"gcc does not know {name} (install gcc's {name})")
    return os.path.realpath(path)


def child_env(extra=None):
    # libstdc++ too: ASan's __cxa_throw interceptor needs it loaded at start-up, and
    # python itself does not link it.
    preload = _gcc_file("libasan.so") + ":" + _gcc_file("libstdc++.so.6")
    env = dict(os.environ, LD_PRELOAD=preload, ASAN_OPTIONS=ASAN_OPTIONS,
               UBSAN_OPTIONS=UBSAN_OPTIONS, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra or {})
    return env


def _mapped_libraries():
    with open("/proc/self/maps") as handle:
        return {line.split()[-1] for line in handle if line.rstrip().endswith(".so")}


def use_sanitized_tfquant():
    """Makes `import tfquant` use the sanitized _native and op library; returns tfquant.

    tfquant/ops/_library.py finds both next to the package; here its module is created
    first (sys.modules) with the op library's path pointed at build/sanitized, and the
    sanitized _native stands in for tfquant._native. Checked afterwards: only the
    sanitized copies are mapped.
    """
    if "tfquant" in sys.modules:
        raise RuntimeError("tfquant was imported before use_sanitized_tfquant()")
    native_path, ops_path = _find("_native"), _find("_tfquant_ops")
    spec = importlib.util.spec_from_file_location("tfquant._native", native_path)
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    sys.modules["tfquant._native"] = native
    spec = importlib.util.spec_from_file_location(
        "tfquant.ops._library", os.path.join(ROOT, "tfquant", "ops", "_library.py"))
    library = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(library)
    if not callable(getattr(library, "_op_library_path", None)):
        raise RuntimeError("tfquant/ops/_library.py has no _op_library_path() any more; "
                           "update fuzz/sanitized.py")
    library._op_library_path = lambda: ops_path
    sys.modules["tfquant.ops._library"] = library
    import tfquant
    tfquant._native, tfquant.ops._library = native, library  # as a normal import sets them
    mapped = _mapped_libraries()
    normal = {p for p in mapped if os.path.dirname(p) == os.path.join(ROOT, "tfquant")}
    if normal or native_path not in mapped or ops_path not in mapped:
        raise RuntimeError(f"not the sanitized libraries: normal ones mapped {sorted(normal)}")
    return tfquant


def delegate_path():
    return _find("_tfquant_delegate")


def claimed_nodes(delegate):
    """Nodes the sanitized delegate claimed (tfquant.export.delegate.delegate_stats would
    open the normal library)."""
    library = ctypes.CDLL(delegate_path())
    library.tfquant_delegate_claimed_nodes.restype = ctypes.c_int64
    library.tfquant_delegate_claimed_nodes.argtypes = [ctypes.c_void_p]
    return library.tfquant_delegate_claimed_nodes(
        ctypes.c_void_p(delegate._get_native_delegate_pointer()))


# ------------------------------------------------------------------ reports

_REPORT = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|"
                     r"AddressSanitizer:DEADLYSIGNAL")
_FRAME = re.compile(r"^\s*#(\d+) 0x[0-9a-f]+ in (.*)$|^\s*#(\d+) 0x[0-9a-f]+ \((.*)\)$")
_OURS = ("cc_ops/", "tfquant::", "_tfquant_delegate", "_tfquant_ops", "_native.cpython")


def sanitizer_reports(stderr):
    """The sanitizer reports in a child's stderr: [{kind, ours, text}]. `ours`: a frame
    before the first interpreter frame is tfquant's code (UBSan only checks ours)."""
    reports = []
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if _REPORT.search(line)]
    for n, start in enumerate(starts):
        if n and start - starts[n - 1] < 3 and "DEADLYSIGNAL" in lines[starts[n - 1]]:
            continue  # the ERROR line right after a DEADLYSIGNAL banner: one report
        block = lines[start:start + 60]
        kind = "ubsan" if "runtime error:" in lines[start] else "asan"
        frames = [m.group(2) or m.group(4) for m in map(_FRAME.match, block) if m]
        ours = kind == "ubsan" or any(tag in f for f in frames[:12] for tag in _OURS)
        reports.append({"kind": kind, "ours": ours, "text": "\n".join(block[:40])})
    return reports
