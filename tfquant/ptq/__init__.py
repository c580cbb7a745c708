"""Post-training quantization: calibration, data-free equalization and bias correction,
outlier channel splitting, AdaRound, GPTQ, sensitivity analysis and mixed precision, zero-shot
calibration data (ZeroQ), and SeerNet's predicted-sparsity convolutions.

    import tfquant
    qmodel = tfquant.ptq.quantize(model, x_calib, calibrator="percentile")
    qmodel = tfquant.ptq.quantize(model, x_calib, data_free=True,
                                  config=tfquant.QuantConfig(per_channel_weights=False))
    tfquant.export_tflite(qmodel, "model.tflite", representative_data=x_calib)
"""

from tfquant.ptq.adaround import AdaRoundResult, adaround_kernel, adaround_wrapper
from tfquant.ptq.bias_correction import (
    analytic_bias_correction,
    clipped_normal_mean,
    empirical_bias_correction,
    float_output_means,
)
from tfquant.quantizers.calibration import (
    ACTIVATION_CALIBRATORS,
    WEIGHT_CALIBRATORS,
    Calibrator,
    EMACalibrator,
    EntropyCalibrator,
    MinMaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    make_calibrator,
    symmetric_quantize,
    weight_clip,
)
from tfquant.ptq.gptq import GPTQResult, gptq_kernel, gptq_wrapper, hessian
from tfquant.ptq.equalization import (
    absorb_high_bias,
    bn_statistics,
    cross_layer_equalize,
    dfq,
    factorize_weights,
    fold_batch_norm,
)
from tfquant.ptq.quantize import (
    adaround_weights,
    calibrate_activations,
    calibrate_weights,
    gptq_weights,
    quantize,
)
from tfquant.ptq.seernet import SeerNetConv2D, seernet
from tfquant.ptq.sensitivity import (
    SensitivityReport,
    layer_sensitivity,
    mixed_precision,
)
from tfquant.ptq.splitting import split_channels
from tfquant.ptq.zero_shot import distill_calibration_data

__all__ = [
    "ACTIVATION_CALIBRATORS", "WEIGHT_CALIBRATORS", "AdaRoundResult", "Calibrator", "EMACalibrator",
    "EntropyCalibrator", "GPTQResult", "MSECalibrator", "MinMaxCalibrator", "PercentileCalibrator",
    "SensitivityReport", "absorb_high_bias", "adaround_kernel", "adaround_weights",
    "adaround_wrapper", "analytic_bias_correction", "bn_statistics", "calibrate_activations",
    "calibrate_weights", "clipped_normal_mean", "cross_layer_equalize", "dfq",
    "distill_calibration_data",
    "empirical_bias_correction", "factorize_weights", "float_output_means",
    "fold_batch_norm", "gptq_kernel", "gptq_weights", "gptq_wrapper", "hessian",
    "layer_sensitivity", "make_calibrator", "mixed_precision",
    "SeerNetConv2D", "quantize", "seernet", "split_channels", "symmetric_quantize", "weight_clip",
]
