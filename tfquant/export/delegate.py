"""LiteRT with tfquant's packed-kernel delegate.

`cc_ops/delegate/packed_delegate.cc`, built by setup.py into
`tfquant/_tfquant_delegate*.so`, is a LiteRT external delegate: it claims the int8
FULLY_CONNECTED nodes whose filter is INT4 or INT2 (what `export_tflite` writes for 4- and
2-bit Dense layers, the latter with `int2_fully_connected=True`) or int8 holding values
that fit in 4 bits (with `cell_bits=4` or `2` any int8 filter, as cells of that width),
repacks each filter once into tfquant's packed format and runs the packed kernels,
multi-threaded. Their outputs are bit-exact with LiteRT's builtin kernel (same integer
accumulation, same requantization). It also claims the hybrid FULLY_CONNECTED nodes (float
activations; INT4/INT2 filters, or int8 holding 4-bit values) of a weight-only export
(`export_tflite(..., activations="dynamic")`): the packed kernels quantize each input row
symmetrically to int8 (`s = max|x_row| / 127`), so per output
`|y − x·w| ≤ 0.5 · s · Σ_k |w[k, n]|` against the float product, and the model agrees with
LiteRT's own hybrid kernel (which quantizes rows asymmetrically) within
`tfquant.export.dynamic.TOLERANCE`, not bit for bit. Every other node stays with LiteRT's
kernels, and so do FULLY_CONNECTED nodes with int16 activations and those with K beyond
exact accumulation (> 16384 at 4 bits, > 65536 at 2 bits).

    from tfquant.export import packed_interpreter
    interpreter = packed_interpreter("model.tflite", num_threads=2)
    interpreter.allocate_tensors(); ...; interpreter.invoke()
    delegate_stats(interpreter.packed_delegate)  # {'claimed_nodes': 3, ...}
"""

import ctypes
import glob
import os

KERNEL_CHOICES = ("auto", "scalar", "avx2", "avx512vnni")
MAX_THREADS = 256
# With XNNPACK behind the delegate, an INT4 FULLY_CONNECTED below this many weights is
# left to XNNPACK's INT4 kernel, which is faster there: at 2 threads (AVX-512 VNNI) the
# delegate ran a 4096×4096 INT4 layer (16.8M weights) at 0.89–0.93× XNNPACK's speed and
# the demo CNN's head at 0.90×, a 4096×11008 one (45M) at 1.16–1.76× (BENCHMARKS.md,
# "LiteRT delegate vs stock LiteRT"). INT2 has no XNNPACK kernel: always claimed.
XNNPACK_INT4_MIN_WEIGHTS = 1 << 25
# ... except where the node's input has a static shape of at most this many rows: the
# packed GEMV then beats XNNPACK at any size (Intel Xeon with AMX, 2 threads, 4096×4096
# INT4: 1.22× at 1 row, 1.28–1.45× at 2–16, 1.05× at 32, 1.03× at 64, 0.94× at 256).
# A dynamic batch (shape signature −1) can be resized to any size: never claimed.
XNNPACK_INT4_MAX_ROWS = 32


def delegate_path():
    """Path of the delegate's shared library (built by setup.py next to this package)."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = sorted(glob.glob(os.path.join(package_dir, "_tfquant_delegate*.so")))
    if not found:
        raise FileNotFoundError(
            f"tfquant's LiteRT delegate (_tfquant_delegate*.so) was not found in {package_dir}; "
            "build tfquant's C++ parts with `pip install --no-build-isolation -e .`")
    return found[0]


CELL_BITS = (None, 4, 2)


def load_packed_delegate(num_threads=None, kernels="auto", min_int4_weights=0,
                         cell_bits=None, max_int4_rows=0):
    """The delegate as an `ai_edge_litert` Delegate, for `experimental_delegates=[...]`.

    Args:
      num_threads: threads per FULLY_CONNECTED, 1..256; None: the CPU count.
      kernels: packed kernel variant, one of KERNEL_CHOICES ("auto": the best this CPU
        runs); a variant this CPU cannot run is an error.
      min_int4_weights: INT4 filters with fewer weights (N·K) are left to the
        interpreter's kernels; 0 claims every one. With XNNPACK (the interpreter's
        default) `XNNPACK_INT4_MIN_WEIGHTS` is where the delegate starts to win.
      max_int4_rows: ... but INT4 filters whose input has a static shape (the
        flatbuffer's shape signature) of at most this many rows are claimed at any size
        (with XNNPACK: `XNNPACK_INT4_MAX_ROWS`); 0: no such exception.
      cell_bits: Cell Division (Park & Yoo, DAC 2019): None (off), 4 or 2. Also claim
        int8 filters whose values need b > 4 bits and run each as n = ⌈b / cell_bits⌉
        cells on the packed kernels of that width: with B = 2^cell_bits, the base-B
        digits of q + 2^(n·cell_bits − 1), shifted to [−B/2, B/2 − 1], give
        `q = Σᵢ Bⁱ·cellᵢ + offset` (two INT4 cells: `q = 16·cell₁ + cell₀ + 8`), so
        `Σ x·q = Σᵢ Bⁱ·Σ x·cellᵢ + offset·Σ x` holds exactly and the outputs are the
        builtin int8 kernel's, bit for bit (`tfquant._native.divide_into_cells` gives
        the cells). The flatbuffer keeps its int8 filters.
    """
    options = {}
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not (
                1 <= num_threads <= MAX_THREADS):
            raise ValueError(f"num_threads={num_threads!r} is not allowed; give an int "
                             f"1..{MAX_THREADS} or None (the CPU count)")
        options["num_threads"] = num_threads
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels={kernels!r} is not allowed; allowed: {', '.join(KERNEL_CHOICES)}")
    options["kernels"] = kernels
    if isinstance(min_int4_weights, bool) or not isinstance(min_int4_weights, int) or \
            min_int4_weights < 0:
        raise ValueError(f"min_int4_weights={min_int4_weights!r} is not allowed; give an "
                         "int ≥ 0")
    options["min_int4_weights"] = min_int4_weights
    if isinstance(max_int4_rows, bool) or not isinstance(max_int4_rows, int) or \
            max_int4_rows < 0:
        raise ValueError(f"max_int4_rows={max_int4_rows!r} is not allowed; give an int ≥ 0")
    options["max_int4_rows"] = max_int4_rows
    if isinstance(cell_bits, bool) or cell_bits not in CELL_BITS:
        raise ValueError(f"cell_bits={cell_bits!r} is not allowed; allowed: None (off), 4, 2")
    options["cell_bits"] = cell_bits or 0
    from ai_edge_litert.interpreter import load_delegate  # only when used, as elsewhere

    return load_delegate(delegate_path(), options)


def delegate_stats(delegate):
    """Nodes the delegate claimed, kernel invocations so far, and its kernel variant.

    `delegate`: what `load_packed_delegate` returned (or `interpreter.packed_delegate`).
    """
    native = getattr(delegate, "_get_native_delegate_pointer", None)
    if native is None:
        raise TypeError(f"expected the delegate from load_packed_delegate, got "
                        f"{type(delegate).__name__}")
    library = ctypes.CDLL(delegate_path())
    pointer = ctypes.c_void_p(native())
    for name in ("tfquant_delegate_claimed_nodes", "tfquant_delegate_invocations"):
        getattr(library, name).restype = ctypes.c_int64
        getattr(library, name).argtypes = [ctypes.c_void_p]
    library.tfquant_delegate_kernels.restype = ctypes.c_char_p
    library.tfquant_delegate_kernels.argtypes = [ctypes.c_void_p]
    claimed = library.tfquant_delegate_claimed_nodes(pointer)
    if claimed < 0:
        raise ValueError("this delegate is not tfquant's packed delegate (another library's)")
    return {"claimed_nodes": claimed,
            "invocations": library.tfquant_delegate_invocations(pointer),
            "kernels": library.tfquant_delegate_kernels(pointer).decode()}


def packed_interpreter(model, num_threads=None, kernels="auto", cell_bits=None,
                       **interpreter_kwargs):
    """A LiteRT `Interpreter` for `model` (a path or the flatbuffer bytes) with the delegate.

    The delegate is kept on the interpreter as `interpreter.packed_delegate` (see
    `delegate_stats`). Extra keyword arguments go to `Interpreter`. When the interpreter
    uses its default delegates (XNNPACK), INT4 layers below `XNNPACK_INT4_MIN_WEIGHTS`
    weights are left to XNNPACK unless their input is a static batch of at most
    `XNNPACK_INT4_MAX_ROWS` rows, so the delegate never makes a model slower.
    `cell_bits`: Cell Division, as in `load_packed_delegate`.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not isinstance(model, (bytes, bytearray, str, os.PathLike)):
        raise TypeError(f"model must be a path or flatbuffer bytes, got {type(model).__name__}")
    builtin_only = interpreter_kwargs.get("experimental_op_resolver_type") in (
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, OpResolverType.BUILTIN_REF)
    delegate = load_packed_delegate(
        num_threads=num_threads, kernels=kernels, cell_bits=cell_bits,
        min_int4_weights=0 if builtin_only else XNNPACK_INT4_MIN_WEIGHTS,
        max_int4_rows=0 if builtin_only else XNNPACK_INT4_MAX_ROWS)
    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), experimental_delegates=[delegate],
                                  **interpreter_kwargs)
    else:
        interpreter = Interpreter(model_path=os.fspath(model), experimental_delegates=[delegate],
                                  **interpreter_kwargs)
    interpreter.packed_delegate = delegate
    return interpreter
