"""tfquant's fake-quant op vs TensorFlow's FakeQuant ops, forward + backward.

Shapes from DESIGN.md: an activation-sized 64×56×56×64 tensor and a weight-sized
3×3×256×256 one; per tensor and per channel (last axis); 8 and 4 bits. Medians of 10 runs,
written to BENCHMARKS.md. Run: `make bench` or `.venv/bin/python benchmarks/bench_fake_quant.py`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_report import median_seconds, write_section  # noqa: E402

import tfquant  # noqa: E402

SHAPES = {"activation 64×56×56×64": (64, 56, 56, 64), "weight 3×3×256×256": (3, 3, 256, 256)}


def forward_backward(quantize, x):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = quantize(x)
        return tape.gradient(y, x)

    return lambda: step().numpy()


def main():
    rows = []
    for shape_name, shape in SHAPES.items():
        x = tf.random.normal(shape)
        channels = shape[-1]
        for bits in (8, 4):
            for granularity in ("per-tensor", "per-channel"):
                if granularity == "per-tensor":
                    lo, hi = tf.constant(-2.0), tf.constant(2.0)

                    def ours(t, lo=lo, hi=hi, bits=bits):
                        return tfquant.ops.fake_quant(t, lo, hi, num_bits=bits)

                    def theirs(t, lo=lo, hi=hi, bits=bits):
                        return tf.quantization.fake_quant_with_min_max_vars(t, lo, hi, num_bits=bits)
                else:
                    lo, hi = -2.0 * tf.ones([channels]), 2.0 * tf.ones([channels])

                    def ours(t, lo=lo, hi=hi, bits=bits):
                        return tfquant.ops.fake_quant(t, lo, hi, num_bits=bits, axis=-1)

                    def theirs(t, lo=lo, hi=hi, bits=bits):
                        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                            t, lo, hi, num_bits=bits)
                runs = 10
                t_ours = median_seconds(forward_backward(ours, x), runs=runs)
                t_tf = median_seconds(forward_backward(theirs, x), runs=runs)
                rows.append((shape_name, bits, granularity, t_tf, t_ours))
                print(f"{shape_name:24s} {bits}-bit {granularity:11s} TF {t_tf * 1e3:8.2f} ms  "
                      f"tfquant {t_ours * 1e3:8.2f} ms  ({t_tf / t_ours:.2f}×)", flush=True)
    body = ["Forward + backward (gradients for x, min and max), medians of 10 runs.", "",
            "| tensor | bits | granularity | TF FakeQuant ms | tfquant ms | speed-up |",
            "|---|---|---|---|---|---|"]
    body += [f"| {s} | {b} | {g} | {t * 1e3:.2f} | {o * 1e3:.2f} | {t / o:.2f}× |"
             for s, b, g, t, o in rows]
    body += ["", "The op here is the scalar reference kernel of the foundation issue; the SIMD "
             "kernels are the fused fake-quant kernels issue."]
    write_section("Fake-quant op vs TensorFlow", "python benchmarks/bench_fake_quant.py",
                  "\n".join(body))


if __name__ == "__main__":
    main()
