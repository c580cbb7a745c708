"""Builds tfquant's three C++ libraries with ASan + UBSan into build/sanitized/.

The extensions, their sources and flags come from setup.py (imported, not copied);
only the sanitizer flags are added. The normal tfquant/*.so are never touched.
A stamp of the sources' hash makes a second call a no-op while nothing changed.

    python fuzz/build_sanitized.py        # prints the directory holding the .so files
    python fuzz/build_sanitized.py --only _native   # one library (what build() runs in a child)
"""

import copy
import glob
import hashlib
import importlib.util
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "sanitized")
LIB_DIR = os.path.join(OUT, "lib", "tfquant")
STAMP = os.path.join(OUT, "stamp")
# float-cast-overflow is not in gcc's "undefined" group; the kernels cast floats to
# integers, so it is added. -O1 -g1: a quicker build and stacks with line numbers.
SANITIZE = ["-fsanitize=address,undefined", "-fsanitize=float-cast-overflow",
            "-fno-omit-frame-pointer"]
EXTRA_COMPILE = SANITIZE + ["-O1", "-g1"]
# gcc 12 rejects constexpr code in TF's absl headers under the null-pointer checks
# ("is not a constant expression"); the op library goes without them, the same
# kernels are checked with them in _native and the delegate.
TF_HEADER_EXCEPTIONS = ["-fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute"]
NAMES = ("_tfquant_ops", "_native", "_tfquant_delegate")


def _setup_module():
    spec = importlib.util.spec_from_file_location("tfquant_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs as __main__
    return module


def _fingerprint():
    digest = hashlib.sha256(" ".join(EXTRA_COMPILE + TF_HEADER_EXCEPTIONS).encode())
    files = sorted(glob.glob(os.path.join(ROOT, "cc_ops", "**", "*"), recursive=True))
    for path in files + [os.path.join(ROOT, "setup.py"), os.path.abspath(__file__)]:
        if os.path.isfile(path):
            digest.update(path.encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def library_paths():
    """{name: path} of the sanitized libraries (KeyError-free: missing ones are absent)."""
    found = {}
    for name in NAMES:
        matches = sorted(glob.glob(os.path.join(LIB_DIR, name + "*.so")))
        if matches:
            found[name] = matches[0]
    return found


def is_current():
    if len(library_paths()) != len(NAMES) or not os.path.exists(STAMP):
        return False
    with open(STAMP) as handle:
        return handle.read().strip() == _fingerprint()


def _build_extensions(names, quiet):
    """Builds the extensions `names` of setup.py with the sanitizer flags (in this process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cwd = os.getcwd()
    os.chdir(ROOT)  # setup.py's source lists are relative to the source tree
    try:
        setup_py = _setup_module()
        extensions = []
        for ext in setup_py.ext_modules:
            if ext.name.split(".")[-1] not in names:
                continue
            ext = copy.deepcopy(ext)
            extra = EXTRA_COMPILE + (TF_HEADER_EXCEPTIONS if ext.name.endswith("_ops") else [])
            ext.extra_compile_args = list(ext.extra_compile_args) + extra
            ext.extra_link_args = list(ext.extra_link_args) + SANITIZE
            extensions.append(ext)
        from setuptools import setup
        # --force: build_ext compares only source dates, not the headers the stamp covers.
        args = ["build_ext", "--force", "--build-lib", os.path.join(OUT, "lib"),
                "--build-temp", os.path.join(OUT, "temp")]
        setup(name="tfquant-sanitized", ext_modules=extensions,
              cmdclass={"build_ext": setup_py.BuildExt},
              script_args=(["--quiet"] if quiet else []) + args)
    finally:
        os.chdir(cwd)


def build(force=False, quiet=False):
    """Builds if the sources changed since the last build; returns library_paths().
    The three libraries compile in child processes at the same time (each one compiles
    serially; on 2 cores this halves the 2-minute cold build)."""
    if not force and is_current():
        return library_paths()
    started = time.time()
    if os.path.exists(STAMP):
        os.remove(STAMP)
    children = [(name, subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--only", name] + (["--quiet"] if quiet else []),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for name in NAMES]
    failed = []
    for name, child in children:
        output, _ = child.communicate()
        if child.returncode != 0:
            failed.append(f"{name} (exit code {child.returncode}):\n{output[-3000:]}")
        elif not quiet:
            print(output, end="", file=sys.stderr)
    if failed:
        raise RuntimeError("sanitized build failed: " + "\n".join(failed))
    paths = library_paths()
    if len(paths) != len(NAMES):
        raise RuntimeError(f"sanitized build produced {sorted(paths)}, expected {NAMES}")
    with open(STAMP, "w") as handle:
        handle.write(_fingerprint())
    print(f"sanitized build: {time.time() - started:.0f} s -> {LIB_DIR}", file=sys.stderr)
    return paths


if __name__ == "__main__":
    if "--only" in sys.argv:
        _build_extensions([sys.argv[sys.argv.index("--only") + 1]], quiet="--quiet" in sys.argv)
    else:
        build(force="--force" in sys.argv, quiet="--quiet" in sys.argv)
        print(LIB_DIR)
