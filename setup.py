"""Builds tfquant's C++ parts without Bazel.

Three extensions, all landing inside the tfquant package:
  tfquant._tfquant_ops  TF custom-op library (loaded with tf.load_op_library,
                        never imported by Python): cc_ops/tf + cc_ops/kernels.
  tfquant._native       pybind11 module: cc_ops/python + cc_ops/kernels, no
                        TensorFlow headers.
  tfquant._tfquant_delegate
                        LiteRT external delegate (a plain shared library that
                        ai_edge_litert's load_delegate opens, never imported):
                        cc_ops/delegate + the packed kernels, no TF or LiteRT
                        headers, only its own exported C entry points visible.

Compile and link flags for the op library come from the installed
TensorFlow (tf.sysconfig), never hard-coded, so the C++ ABI always matches.
Install with `pip install --no-build-isolation -e .` (or without -e).
"""

import glob
import os
import platform

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the build log readable
import tensorflow as tf  # noqa: E402

TF_VERSION = tf.__version__
TF_COMPILE_FLAGS = tf.sysconfig.get_compile_flags()
TF_LINK_FLAGS = tf.sysconfig.get_link_flags()
# The native module includes no TF header, but uses TF's libstdc++ ABI choice
# so that build_info() reports what the op library was built with.
ABI_FLAGS = [f for f in TF_COMPILE_FLAGS if f.startswith("-D_GLIBCXX_USE_CXX11_ABI")]

# -ffp-contract=off: no fused multiply-add, the forward must match TF's bits.
# -fno-trapping-math changes no value (only FP exception-flag semantics) and
# lets GCC vectorize the branch-free scalar kernels.
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-std=c++17"]

# One translation unit per ISA (cc_ops/kernels/*_avx2.cc, ...): only that file
# gets the ISA flags, so no wide-vector code leaks into shared functions.
# The dispatch (cc_ops/kernels/isa_dispatch.cc) runs a file's code only
# when the CPU and OS support every flag given here; keep the two in step.
# VNNI code goes in *_avx512vnni.cc, so the plain AVX-512 kernels also run on
# AVX-512 CPUs without VNNI.
ISA_FLAGS = {
    "_avx2.cc": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512.cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                   "-mfma", "-mf16c"],
    "_avx512vnni.cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                       "-mavx512vnni", "-mfma", "-mf16c"],
}
ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(*patterns):
    found = []
    for pattern in patterns:
        found += sorted(glob.glob(pattern, root_dir=ROOT))
    return found


def c_string(text):
    """A -D macro value that is a C string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


KERNEL_SOURCES = sources("cc_ops/kernels/*.cc")
PACKED_KERNEL_SOURCES = sources("cc_ops/kernels/packed*.cc", "cc_ops/kernels/cpu_features.cc",
                                "cc_ops/kernels/isa_dispatch.cc", "cc_ops/kernels/task_pool.cc")
BUILD_FLAGS = " ".join(COMMON_FLAGS + TF_COMPILE_FLAGS + TF_LINK_FLAGS)
INFO_MACROS = [
    ("TFQUANT_TF_VERSION", c_string(TF_VERSION)),
    ("TFQUANT_BUILD_FLAGS", c_string(BUILD_FLAGS)),
]


# Compile the sources of each extension on every core (TFQUANT_BUILD_JOBS to choose):
# pybind11's patch of distutils' compile loop; each file still goes through `_compile`,
# where BuildExt adds the ISA flags. Halves the cold build on 2 cores.
ParallelCompile("TFQUANT_BUILD_JOBS", default=0).install()


class BuildExt(build_ext):
    """Separate object directories per extension (both compile kernels/*.cc
    with different flags) and per-source ISA flags."""

    def build_extension(self, ext):
        build_temp = self.build_temp
        original_compile = self.compiler._compile

        def compile_with_isa_flags(obj, src, ext_name, cc_args, extra_postargs, pp_opts):
            extra = [f for suffix, flags in ISA_FLAGS.items() if src.endswith(suffix) for f in flags]
            original_compile(obj, src, ext_name, cc_args, list(extra_postargs) + extra, pp_opts)

        self.build_temp = os.path.join(build_temp, ext.name)
        self.compiler._compile = compile_with_isa_flags
        try:
            super().build_extension(ext)
        finally:
            self.compiler._compile = original_compile
            self.build_temp = build_temp


if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
    ISA_FLAGS.clear()  # x86 flags would break ARM builds

def kernel_library(extension_class, name, entry_sources, flags, **kwargs):
    """An extension of the files `entry_sources` over all the kernels, which records the
    build info (INFO_MACROS)."""
    return extension_class(name, sources=sources(entry_sources) + KERNEL_SOURCES,
                           include_dirs=[ROOT], define_macros=INFO_MACROS,
                           extra_compile_args=flags + COMMON_FLAGS, **kwargs)


ext_modules = [
    kernel_library(Extension, "tfquant._tfquant_ops", "cc_ops/tf/*.cc", TF_COMPILE_FLAGS,
                   extra_link_args=TF_LINK_FLAGS, language="c++"),
    kernel_library(Pybind11Extension, "tfquant._native", "cc_ops/python/*.cc", ABI_FLAGS,
                   cxx_std=17),
    Extension(
        "tfquant._tfquant_delegate",
        sources=sources("cc_ops/delegate/*.cc") + PACKED_KERNEL_SOURCES,
        include_dirs=[ROOT],
        extra_compile_args=COMMON_FLAGS + ["-fvisibility=hidden"],
        extra_link_args=["-pthread"],
        language="c++",
    ),
]

# Guarded so that fuzz/build_sanitized.py can import the lists and flags above
# (setuptools runs this file as __main__).
if __name__ == "__main__":
    setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
