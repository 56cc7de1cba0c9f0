"""The tf_keras side of the bridge: rebuild the described model and check it.

Reads the folder `describe.write_bridge` wrote (`handoff.read_bridge`),
rebuilds the graph with `tf_keras.layers`, copies the weights and checks the
rebuilt model's outputs on the probe images against the Keras 3 outputs (max
|difference| <= `PARITY_ATOL`). It imports only numpy, TensorFlow and tf_keras
(never Keras 3 code of this package), so it runs in the tfmot process.

Example:
```python
# in the tfmot process (e.g. after `import tensorflow_model_optimization`)
from mbakt_tf.tfmot import rebuild
model, parity = rebuild.load_bridge("work/bridge")   # raises BridgeParityError if off
parity["max_abs_diff"]                                # e.g. 2.4e-07
```
"""

import numpy as np

from mbakt_tf.tfmot.handoff import (  # noqa: F401 - read_bridge: the reader callers pair with load_bridge
    PARITY_ATOL,
    BridgeParityError,
    UnsupportedLayerError,
    decode_key,
    read_bridge,
)

_CUSTOM = {}


def custom_objects():
    """The bridge's own tf_keras layers (`BridgeSlice`), for `tf_keras` (de)serialization scopes."""
    if not _CUSTOM:
        import tf_keras

        class BridgeSlice(tf_keras.layers.Layer):
            """`x[key]` with a constant key (e.g. keras-cv's Focus: `x[..., ::2, ::2, :]`)."""

            def __init__(self, key, **kwargs):
                super().__init__(**kwargs)
                self.key = key

            def call(self, inputs):
                return inputs[decode_key(self.key)]

            def get_config(self):
                return {**super().get_config(), "key": self.key}

        _CUSTOM["BridgeSlice"] = BridgeSlice
    return dict(_CUSTOM)


def build_tf_keras(graph, weights):
    """The tf_keras model described by `graph`, with `weights` copied in."""
    import tf_keras

    custom = custom_objects()
    tensors = {}
    inputs = []
    for spec in graph["inputs"]:
        tensor = tf_keras.Input(shape=tuple(spec["shape"]), dtype=spec["dtype"], name=spec["name"])
        tensors[spec["tensor"]] = tensor
        inputs.append(tensor)
    layers_with_weights = []
    for node in graph["nodes"]:
        cls = custom.get(node["class"]) or getattr(tf_keras.layers, node["class"], None)
        if cls is None:
            raise UnsupportedLayerError(f"tf_keras has no layer {node['class']!r} (node {node['name']!r}).")
        layer = cls(name=node["name"], **node["config"])
        args = node["inputs"]
        x = [tensors[t] for t in args] if isinstance(args, list) else tensors[args]
        tensors[node["output"]] = layer(x)
        if node["num_weights"]:
            layers_with_weights.append((layer, node))
    outputs = [tensors[t] for t in graph["outputs"]]
    model = tf_keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                           outputs[0] if len(outputs) == 1 else outputs, name=graph["name"])
    for layer, node in layers_with_weights:
        values = [weights[f"{node['name']}:{i}"] for i in range(node["num_weights"])]
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(
                f"Weights of {node['name']!r} ({node['class']}): shapes "
                f"{[tuple(v.shape) for v in values]} do not fit tf_keras's {expected}."
            )
        layer.set_weights(values)
    if model.count_params() != graph["parameters"]:
        raise ValueError(
            f"The tf_keras model has {model.count_params():,} parameters, the Keras 3 model "
            f"{graph['parameters']:,}."
        )
    return model


def parity(model, probe, atol=PARITY_ATOL):
    """Max |output difference| of a rebuilt model against the Keras 3 outputs in `probe`."""
    outputs = np.asarray(model(probe["images"], training=False), np.float32)
    diff = float(np.max(np.abs(outputs - probe["reference"])))
    return {
        "max_abs_diff": diff,
        "max_abs_reference": float(np.max(np.abs(probe["reference"]))),
        "atol": atol,
        "images": int(len(probe["images"])),
        "passed": bool(diff <= atol),
    }


def load_bridge(directory, check=True, atol=PARITY_ATOL):
    """`(tf_keras model, parity dict)` from a bridge folder.

    With `check`, raises `BridgeParityError` when the rebuilt model's outputs
    on the probe images differ from the Keras 3 ones by more than `atol`.
    """
    graph, weights, probe = read_bridge(directory)
    model = build_tf_keras(graph, weights)
    result = None
    if probe is not None:
        result = parity(model, probe, atol)
        if check and not result["passed"]:
            raise BridgeParityError(
                f"tf_keras model rebuilt from {directory} differs from the Keras 3 model: max "
                f"|output diff| {result['max_abs_diff']:.3g} > {atol:g} on {result['images']} probe images."
            )
    return model, result
