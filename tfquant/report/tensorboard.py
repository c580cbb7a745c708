"""TensorBoard summaries written with TensorFlow alone (no tensorboard package needed to
write them)."""

import numpy as np
import tensorflow as tf


def _metadata(plugin):
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    return metadata


def write_scalar(tag, value, step):
    """A TensorBoard scalar through the core `tf.summary.write` (no tensorboard package
    needed to write; TensorBoard reads it as a scalars-plugin summary)."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step,
                     metadata=_metadata("scalars"))


def write_histogram(tag, values, step, bins=30):
    """A TensorBoard histogram: the histograms plugin's [bins, 3] (left, right, count)."""
    values = np.asarray(values, np.float64).ravel()
    counts, edges = np.histogram(values, bins=bins)
    buckets = np.stack([edges[:-1], edges[1:], counts], axis=1).astype(np.float64)
    tf.summary.write(tag, tf.constant(buckets), step=step, metadata=_metadata("histograms"))
