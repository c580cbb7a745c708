"""How far a quantized tensor is from its float original (numpy only)."""

import numpy as np


def sqnr_db(reference, quantized):
    """Signal-to-quantization-noise ratio `10·log10(Σ x² / Σ (q − x)²)` in dB; ∞ when
    `quantized` equals `reference` (no noise)."""
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((np.asarray(quantized, np.float64) - reference) ** 2))
    return sqnr_db_of_sums(float(np.sum(reference ** 2)), noise)


def sqnr_db_of_sums(signal, noise):
    """SQNR in dB from Σ x² and Σ (q − x)² (sums gathered over batches)."""
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(signal, 1e-30) / noise))
