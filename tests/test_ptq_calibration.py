import numpy as np
import pytest
import tensorflow as tf

from tfquant import ptq
from tfquant.quantizers.sawb import SAWBQuantizer


def test_percentile_is_numpy_percentile_of_the_sample():
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    cal = ptq.PercentileCalibrator(99.9)
    for part in np.split(x, 5):
        cal.observe(part)
    lo, hi = cal.compute_range()
    assert lo == pytest.approx(np.percentile(x, 0.1), rel=1e-6)
    assert hi == pytest.approx(np.percentile(x, 99.9), rel=1e-6)
    lo, hi = cal.compute_range(symmetric=True)
    assert hi == -lo == pytest.approx(np.percentile(np.abs(x), 99.9), rel=1e-6)


def test_minmax_and_ema_calibrators_give_the_observed_range():
    a, b = np.array([-1.0, 2.0]), np.array([-3.0, 1.0])
    mm, ema = ptq.MinMaxCalibrator(), ptq.EMACalibrator(decay=0.9)
    for batch in (a, b):
        mm.observe(batch)
        ema.observe(batch)
    assert mm.compute_range() == (-3.0, 2.0)
    lo, hi = ema.compute_range()
    assert lo == pytest.approx(0.9 * -1 + 0.1 * -3) and hi == pytest.approx(0.9 * 2 + 0.1 * 1)
    relu = ptq.MinMaxCalibrator()
    relu.observe(np.array([0.5, 3.0]))
    assert relu.compute_range() == (0.0, 3.0)  # the range always holds 0


@pytest.mark.parametrize("bits, optimum", [(4, 2.55), (8, 3.92)])
def test_mse_clip_of_a_gaussian_is_near_the_published_optimum(bits, optimum):
    # Banner et al. 2019: optimal clip of N(0, 1) is 2.55σ at 4 bits, 3.92σ at 8 bits.
    x = np.random.default_rng(1).standard_normal(1 << 18)
    cal = ptq.MSECalibrator()
    cal.observe(x)
    lo, hi = cal.compute_range(bits, symmetric=True)
    assert hi == pytest.approx(optimum, rel=0.06) and lo == -hi
    assert ptq.weight_clip(x, bits, "mse") == pytest.approx(optimum, rel=0.06)


def test_entropy_clips_heavy_tails_but_not_a_uniform():
    rng = np.random.default_rng(2)
    heavy = rng.standard_t(2, 1 << 17)
    cal = ptq.EntropyCalibrator()
    cal.observe(heavy)
    lo, hi = cal.compute_range(8)
    assert -lo == hi < 0.25 * np.abs(heavy).max()
    flat = ptq.EntropyCalibrator()
    flat.observe(rng.uniform(0, 1, 1 << 17))
    lo, hi = flat.compute_range(8)
    assert lo == 0.0 and hi > 0.95


def test_weight_clip_gives_the_minmax_sawb_and_mse_clips():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 4, 6))
    per_channel = ptq.weight_clip(w, 8, "minmax", axis=-1)
    np.testing.assert_allclose(per_channel, np.abs(w).reshape(-1, 6).max(0))
    c1, c2 = SAWBQuantizer.COEFFICIENTS[4]
    expected = c1 * np.sqrt(np.mean(w ** 2)) - c2 * np.mean(np.abs(w))
    assert ptq.weight_clip(w, 4, "sawb") == pytest.approx(min(expected, np.abs(w).max()))
    assert ptq.weight_clip(w, 4, "mse") < np.abs(w).max()


def test_symmetric_grid_matches_tensorflow_fake_quant():
    w = np.random.default_rng(4).standard_normal(1000).astype(np.float32)
    clip = 1.5
    ours = ptq.symmetric_quantize(w, clip, 4)
    theirs = tf.quantization.fake_quant_with_min_max_vars(
        w, -clip, clip, num_bits=4, narrow_range=True).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_unknown_calibrator_is_rejected():
    with pytest.raises(ValueError, match="Unknown calibrator"):
        ptq.make_calibrator("median")
