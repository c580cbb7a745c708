"""Reports on a quantized model: the tables and plots of `tfquant report`
(`write_report`), and the TensorBoard summaries of `callbacks.QuantizerStats`."""

from tfquant.report.html import write_report
from tfquant.report.rows import activation_rows, integer_rows, weight_rows

__all__ = ["activation_rows", "integer_rows", "weight_rows", "write_report"]
