"""The valid models the delegate fuzzer starts from, exported once and cached.

    python fuzz/models.py build/fuzz/models     (normal, unsanitized tfquant)

W4A8 (INT4 filters), W2A8 (INT2 filters), W8A8 (int8 filters, which the fuzzed
delegates claim with cell_bits) and weight-only INT4 (hybrid: float activations) exports
of a small QAT-trained MLP with odd widths, and a W4A8 Dense over a 3-D input (FULLY_CONNECTED with keep_num_dims), as
tests/test_delegate.py makes them. Writes <name>.tflite and models.json.
"""

import json
import os
import sys

MODELS = ("mlp_int4", "mlp_int2", "mlp_int8", "mlp_hybrid_int4", "sequence_int4")


def _build(name):
    import keras
    from keras import layers
    keras.utils.set_random_seed(7)
    if name.startswith("sequence"):
        inputs = keras.Input((3, 20))
        x = layers.Dense(24, activation="relu", name="per_step")(inputs)
        outputs = layers.Dense(5, name="out")(layers.Flatten()(x))
    else:
        inputs = keras.Input((37,))
        x = layers.Dense(33, activation="relu", name="d0")(inputs)
        x = layers.Dense(18, activation="relu6", name="d1")(x)
        outputs = layers.Dense(7, name="out")(x)
    return keras.Model(inputs, outputs)


def export_all(folder):
    import numpy as np
    import tfquant
    os.makedirs(folder, exist_ok=True)
    listing = {}
    for name in MODELS:
        path = os.path.join(folder, name + ".tflite")
        if not os.path.exists(path):
            model = _build(name)
            rng = np.random.default_rng(3)
            x = rng.normal(size=(96,) + tuple(model.input_shape[1:])).astype(np.float32)
            bits = {"int2": 2, "int8": 8}.get(name.rsplit("_", 1)[1], 4)
            hybrid = "hybrid" in name
            qmodel = tfquant.quantize_model(model, tfquant.QuantConfig(
                weight_bits=bits, first_last_bits=None,
                **({"activation_quantizer": None} if hybrid else {})))
            qmodel.compile("adam", "mse")
            y = rng.normal(size=(len(x),) + tuple(qmodel.output_shape[1:]))
            qmodel.fit(x, y, epochs=1, batch_size=32, verbose=0)
            report = tfquant.export_tflite(qmodel, representative_data=x,
                                           int2_fully_connected=bits == 2,
                                           activations="dynamic" if hybrid else "static")
            with open(path + ".part", "wb") as handle:
                handle.write(report.flatbuffer)
            os.replace(path + ".part", path)
        listing[name] = os.path.abspath(path)
    with open(os.path.join(folder, "models.json"), "w") as handle:
        json.dump(listing, handle, indent=1)
    return listing


if __name__ == "__main__":
    print(json.dumps(export_all(sys.argv[1])))
