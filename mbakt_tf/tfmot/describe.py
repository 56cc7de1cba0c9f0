"""The Keras 3 side of the bridge: a functional model as a flat tf_keras description.

Walks the model's functional graph in topological order and emits one entry
per primitive layer (its tf_keras class, the tf_keras constructor arguments,
its input tensors, its number of weights), the weights keyed `"<layer>:<i>"`,
and, with `write_bridge`, random probe images and the Keras 3 outputs on them
(the hand-off files of `handoff.py`). Nested models (keras-cv's `Sequential`
conv blocks) are inlined; composite layers without weights of their own
(keras-cv's `SqueezeAndExcite2D`, `CrossStagePartial`, `HardSigmoidActivation`)
are inlined by tracing their `call` symbolically; `keras.ops` calls in the
graph (`x + 3.0`, `x * (1 / 6)`, `relu`, slicing) become layers (`Rescaling`,
`ReLU`, a strided-slice layer; a mean over height and width, as in keras-hub's
squeeze-and-excite, `GlobalAveragePooling2D`); activations that tf_keras
defines differently (`hard_sigmoid`, `hard_silu`, `relu6`, `leaky_relu`) are
spelled out in layers with the Keras 3 definition. Anything else raises
`UnsupportedLayerError` naming the layer, the block it sits in, and its class.

Why not read the `.keras` archive's `config.json` in the tfmot process? That
would mean re-implementing Keras 3's deserialization (nested functional
configs, keras-cv's registered layers, Python `Lambda` bodies) without Keras 3;
walking the live, built graph here resolves all of that once, and catches
unsupported layers before any tfmot work starts.

Runs in the Keras 3 process only (it imports keras).

Example:
```python
from mbakt_tf.tfmot import describe
graph, weights = describe.describe(mbakt_model.main_model())
[node["class"] for node in graph["nodes"]][:3]      # e.g. ['Rescaling', 'Conv2D', 'BatchNormalization']
describe.write_bridge(mbakt_model.main_model(), "work/bridge")   # graph.json, weights.npz, probe.npz
```
"""

import numpy as np

from mbakt_tf.tfmot.handoff import FORMAT, FORMAT_VERSION, UnsupportedLayerError, encode_key, write_bridge_files

# tf_keras activation names whose definition equals Keras 3's: kept inside the layer.
_SAME_ACTIVATIONS = {
    "linear": "linear",
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "softmax",
    "silu": "swish",
    "swish": "swish",
    "elu": "elu",
    "selu": "selu",
    "softplus": "softplus",
    "softsign": "softsign",
    "exponential": "exponential",
    "gelu": "gelu",
}
# Spelled out in layers (tf_keras's hard_sigmoid is 0.2x + 0.5, Keras 3's is relu6(x + 3) / 6).
_SPELLED_OUT_ACTIVATIONS = ("hard_sigmoid", "hard_silu", "hard_swish", "relu6", "leaky_relu")
# Tried in this order when an activation has to be recognised by its values (e.g. a Lambda).
_PROBED_ACTIVATIONS = (
    "linear", "relu", "relu6", "sigmoid", "tanh", "silu", "hard_sigmoid", "hard_silu", "gelu",
    "elu", "selu", "softplus", "softsign", "leaky_relu",
)


def describe(model):
    """`(graph, weights)`: the flat description of a Keras 3 functional `model`.

    `graph` is JSON-serializable (see the module doc); `weights` maps
    `"<layer>:<i>"` to numpy arrays. Raises `UnsupportedLayerError`.
    """
    return _Describer(model).run()


def write_bridge(model, directory, probe_images=None, num_probe=4, seed=0):
    """Writes `graph.json`, `weights.npz` and `probe.npz` of `model` into `directory`.

    Args:
        model: a Keras 3 functional model with one image input and one output
            (e.g. `MBAKT.main_model()`).
        directory: created if needed.
        probe_images: images the parity check runs on; default `num_probe`
            random images, uniform in [0, 255] (the models take raw pixels).
        seed: seed of the random probe images.

    Returns:
        `directory`.
    """
    graph, weights = describe(model)
    if probe_images is None:
        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        probe_images = np.random.default_rng(seed).uniform(0, 255, (num_probe,) + shape)
    probe_images = np.asarray(probe_images, np.float32)
    reference = np.asarray(model(probe_images, training=False), np.float32)
    write_bridge_files(directory, graph, weights, probe_images, reference)
    return directory


class _Describer:
    """Walks a Keras 3 functional graph and emits tf_keras layer specs."""

    def __init__(self, model):
        import keras

        self.keras = keras
        self.model = model
        self.nodes = []
        self.weights = {}
        self.names = set()
        self.count = 0
        self.shapes = {}  # tensor name -> static shape without the batch axis, where known
        self.current_output_shape = None
        self.prefix = ""  # where the node being converted sits (nested models, traced layers)

    # ---------------------------------------------------------------- helpers

    def tensor(self):
        self.count += 1
        return f"t{self.count}"

    def unique(self, name):
        name = name.replace("/", "_")
        candidate, k = name, 1
        while candidate in self.names:
            k += 1
            candidate = f"{name}_{k}"
        self.names.add(candidate)
        return candidate

    def add(self, cls, config, inputs, name, weights=(), source=None):
        """Appends one tf_keras layer; returns the name of its output tensor."""
        name = self.unique(name)
        output = self.tensor()
        for i, value in enumerate(weights):
            self.weights[f"{name}:{i}"] = np.asarray(value)
        self.nodes.append({
            "name": name,
            "class": cls,
            "config": config,
            "inputs": inputs,
            "output": output,
            "num_weights": len(weights),
            "source": source or name,
        })
        return output

    def unsupported(self, layer, why=""):
        kind = f"{type(layer).__module__}.{type(layer).__name__}"
        name = getattr(layer, "name", "?")
        inside = f" (in {self.prefix.rstrip('_')!r})" if self.prefix else ""
        raise UnsupportedLayerError(
            f"Cannot convert layer {name!r}{inside} of type {kind} to tf_keras"
            f"{': ' + why if why else ''}. "
            "Supported: Conv2D, DepthwiseConv2D, SeparableConv2D, Dense, BatchNormalization, "
            "ReLU, LeakyReLU, Activation, Softmax, Add, Subtract, Multiply, Average, Maximum, "
            "Minimum, Concatenate, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, "
            "GlobalMaxPooling2D, ZeroPadding2D, Cropping2D, UpSampling2D, Resizing, Rescaling, "
            "Reshape, Flatten, Permute, Dropout, SpatialDropout2D, Identity, nested Sequential/"
            "functional models, composite layers without weights of their own, and keras.ops "
            "arithmetic with constants, activations, slicing and means over height and width."
        )

    # ------------------------------------------------------------------- walk

    def run(self):
        keras = self.keras
        model = self.model
        if not getattr(model, "_nodes_by_depth", None) or len(model.inputs) != 1:
            raise UnsupportedLayerError(
                f"{model.name!r} must be a functional keras.Model with one input "
                f"(got {type(model).__name__} with {len(getattr(model, 'inputs', []) or [])} inputs)."
            )
        inputs = []
        scope = {}
        for kt in model.inputs:
            name = self.tensor()
            scope[id(kt)] = name
            self.shapes[name] = tuple(kt.shape[1:])
            inputs.append({
                "tensor": name,
                "name": kt.name.split(":")[0],
                "shape": [None if d is None else int(d) for d in kt.shape[1:]],
                "dtype": "float32",
            })
        self.walk_functional(model, scope, prefix="")
        outputs = keras.tree.flatten(model.outputs)
        graph = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": model.name,
            "inputs": inputs,
            "outputs": [scope[id(kt)] for kt in outputs],
            "nodes": self.nodes,
            "parameters": int(model.count_params()),
            "keras_version": keras.__version__,
        }
        return graph, self.weights

    def walk_functional(self, functional, scope, prefix):
        """Emits every node of `functional` whose inputs are bound in `scope` (id -> tensor)."""
        depths = sorted(functional._nodes_by_depth, reverse=True)
        for depth in depths:
            for node in functional._nodes_by_depth[depth]:
                if node.is_input or node.operation is None:
                    continue
                self.node(node.operation, node.arguments.args, node.arguments.kwargs,
                          node.outputs, scope, prefix)

    def resolve(self, value, scope):
        keras = self.keras
        if isinstance(value, keras.KerasTensor):
            if id(value) not in scope:
                raise UnsupportedLayerError(f"Tensor {value.name!r} comes from outside the model graph.")
            return scope[id(value)]
        if isinstance(value, (list, tuple)):
            return [self.resolve(v, scope) for v in value]
        return value

    def node(self, op, args, kwargs, outputs, scope, prefix):
        keras = self.keras
        self.prefix = prefix
        kwargs = {k: v for k, v in kwargs.items() if k not in ("training", "mask")}
        if any(isinstance(v, keras.KerasTensor) for v in keras.tree.flatten(kwargs)):
            self.unsupported(op, f"tensor keyword arguments {sorted(kwargs)}")
        if len(outputs) != 1:
            self.unsupported(op, f"{len(outputs)} outputs (one is supported)")
        if isinstance(op, keras.layers.Layer):
            if kwargs:
                self.unsupported(op, f"call arguments {sorted(kwargs)}")
            if len(args) != 1:
                self.unsupported(op, f"{len(args)} positional call arguments")
            inputs = self.resolve(args[0], scope)
            for kt, name in zip(keras.tree.flatten(args[0]), keras.tree.flatten(inputs)):
                self.shapes.setdefault(name, tuple(kt.shape[1:]))
            self.current_output_shape = tuple(outputs[0].shape[1:])
            result = self.layer(op, inputs, prefix)
        else:
            self.current_output_shape = tuple(outputs[0].shape[1:])
            result = self.operation(op, args, kwargs, scope, prefix)
        scope[id(outputs[0])] = result
        self.shapes[result] = tuple(outputs[0].shape[1:])

    # ----------------------------------------------------------------- layers

    def layer(self, layer, x, prefix):
        """Emits `layer` applied to tensor name(s) `x`; returns the output tensor name."""
        keras = self.keras
        L = keras.layers
        name = prefix + layer.name
        cfg = layer.get_config()
        weights = [np.asarray(w) for w in layer.get_weights()]

        if isinstance(layer, keras.Model):
            return self.nested_model(layer, x, prefix)
        if isinstance(layer, L.InputLayer):
            return x
        if isinstance(layer, L.SeparableConv2D):
            conf = _pick(cfg, "filters", "kernel_size", "strides", "padding", "data_format",
                         "dilation_rate", "depth_multiplier", "use_bias")
            return self.with_activation(layer, "SeparableConv2D", conf, x, name, weights)
        if isinstance(layer, L.DepthwiseConv2D):
            conf = _pick(cfg, "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                         "depth_multiplier", "use_bias")
            return self.with_activation(layer, "DepthwiseConv2D", conf, x, name, weights)
        if type(layer) is L.Conv2D:
            conf = _pick(cfg, "filters", "kernel_size", "strides", "padding", "data_format",
                         "dilation_rate", "groups", "use_bias")
            return self.with_activation(layer, "Conv2D", conf, x, name, weights)
        if type(layer) is L.Dense:
            conf = _pick(cfg, "units", "use_bias")
            if getattr(layer, "lora_enabled", False):
                self.unsupported(layer, "LoRA-enabled Dense")
            return self.with_activation(layer, "Dense", conf, x, name, weights)
        if type(layer) is L.BatchNormalization:
            conf = _pick(cfg, "axis", "momentum", "epsilon", "center", "scale")
            return self.add("BatchNormalization", conf, x, name, weights)
        if type(layer) is L.ReLU:
            conf = {"max_value": _float_or_none(cfg.get("max_value")),
                    "negative_slope": float(cfg.get("negative_slope", 0.0)),
                    "threshold": float(cfg.get("threshold", 0.0))}
            return self.add("ReLU", conf, x, name)
        if type(layer) is L.LeakyReLU:
            return self.add("LeakyReLU", {"alpha": float(cfg["negative_slope"])}, x, name)
        if type(layer) is L.Softmax:
            return self.add("Softmax", {"axis": cfg.get("axis", -1)}, x, name)
        if type(layer) is L.Activation:
            return self.activation(layer.activation, x, name)
        if type(layer) is L.Identity:
            return self.add("Activation", {"activation": "linear"}, x, name)
        if type(layer) in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
            return self.add(type(layer).__name__, {}, list(x), name)
        if type(layer) is L.Concatenate:
            return self.add("Concatenate", {"axis": cfg["axis"]}, list(x), name)
        if type(layer) in (L.MaxPooling2D, L.AveragePooling2D):
            conf = _pick(cfg, "pool_size", "strides", "padding", "data_format")
            return self.add(type(layer).__name__, conf, x, name)
        if type(layer) in (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D):
            conf = _pick(cfg, "data_format", "keepdims")
            return self.add(type(layer).__name__, conf, x, name)
        if type(layer) is L.ZeroPadding2D:
            return self.add("ZeroPadding2D", _pick(cfg, "padding", "data_format"), x, name)
        if type(layer) is L.Cropping2D:
            return self.add("Cropping2D", _pick(cfg, "cropping", "data_format"), x, name)
        if type(layer) is L.UpSampling2D:
            return self.add("UpSampling2D", _pick(cfg, "size", "data_format", "interpolation"), x, name)
        if type(layer) is L.Resizing:
            conf = _pick(cfg, "height", "width", "interpolation", "crop_to_aspect_ratio")
            return self.add("Resizing", conf, x, name)
        if type(layer) is L.Rescaling:
            conf = {"scale": _jsonable(cfg["scale"]), "offset": _jsonable(cfg["offset"])}
            return self.add("Rescaling", conf, x, name)
        if type(layer) is L.Reshape:
            return self.add("Reshape", {"target_shape": list(cfg["target_shape"])}, x, name)
        if type(layer) is L.Flatten:
            return self.add("Flatten", _pick(cfg, "data_format"), x, name)
        if type(layer) is L.Permute:
            return self.add("Permute", {"dims": list(cfg["dims"])}, x, name)
        if type(layer) in (L.Dropout, L.SpatialDropout2D):
            return self.add(type(layer).__name__, {"rate": float(cfg["rate"])}, x, name)
        if type(layer) is L.Lambda:
            activation = self.recognise(layer.function)
            if activation is None:
                self.unsupported(layer, "a Lambda that is not a known activation")
            return self.spell_activation(activation, x, name)
        return self.composite(layer, x, prefix)

    def with_activation(self, layer, cls, conf, x, name, weights):
        """A weight layer; its activation stays inside when tf_keras defines it the same."""
        activation = getattr(layer, "activation", None)
        known = self.activation_name(activation)
        if known in _SAME_ACTIVATIONS:
            conf["activation"] = _SAME_ACTIVATIONS[known]
            return self.add(cls, conf, x, name, weights)
        conf["activation"] = "linear"
        y = self.add(cls, conf, x, name, weights)
        self.shapes[y] = self.current_output_shape
        return self.activation(activation, y, name + "_activation")

    def nested_model(self, model, x, prefix):
        """Inlines a nested Sequential or functional model."""
        keras = self.keras
        functional = model
        if isinstance(model, keras.Sequential):
            functional = getattr(model, "_functional", None)
            if functional is None:  # a Sequential never built on an Input: chain its layers
                for layer in model.layers:
                    x = self.layer(layer, x, prefix + model.name + "_")
                return x
        if not getattr(functional, "_nodes_by_depth", None):
            self.unsupported(model, "a subclassed model (only Sequential and functional models are inlined)")
        inner_inputs = keras.tree.flatten(functional.inputs)
        xs = x if isinstance(x, list) else [x]
        if len(xs) != len(inner_inputs):
            self.unsupported(model, f"called on {len(xs)} tensors, has {len(inner_inputs)} inputs")
        scope = {id(kt): name for kt, name in zip(inner_inputs, xs)}
        self.walk_functional(functional, scope, prefix + model.name + "_")
        outputs = keras.tree.flatten(functional.outputs)
        if len(outputs) != 1:
            self.unsupported(model, f"{len(outputs)} outputs")
        return scope[id(outputs[0])]

    def composite(self, layer, x, prefix):
        """A layer built from other layers and ops, without weights of its own: trace its `call`."""
        keras = self.keras
        own = {id(v) for v in layer.weights}
        sub = {id(v) for s in layer._flatten_layers(include_self=False, recursive=True) for v in s.weights}
        if own - sub:
            self.unsupported(layer, "it has weights of its own (a custom layer is inlined only when "
                                    "its weights all belong to standard sublayers)")
        if isinstance(x, list):
            self.unsupported(layer, "a custom layer with several inputs")
        shape = self.shapes.get(x)
        if shape is None:
            self.unsupported(layer, "unknown input shape")
        try:
            symbolic = keras.Input(shape=shape)
            traced = layer.call(symbolic)
            functional = keras.Model(symbolic, traced)
        except UnsupportedLayerError:
            raise
        except Exception as error:  # noqa: BLE001 - any tracing failure: not convertible
            self.unsupported(layer, f"its call() could not be traced ({type(error).__name__}: {error})")
        used = {id(v) for op in functional._operations for v in getattr(op, "weights", [])}
        if sub - used:
            self.unsupported(layer, "its call() does not use all of its sublayers' weights")
        scope = {id(symbolic): x}
        self.walk_functional(functional, scope, prefix + layer.name + "_")
        return scope[id(functional.outputs[0])]

    # -------------------------------------------------------------- keras.ops

    def operation(self, op, args, kwargs, scope, prefix):
        keras = self.keras
        kind = type(op).__name__
        name = prefix + (op.name or kind.lower())
        resolved = [self.resolve(a, scope) for a in args]
        tensors = [isinstance(a, keras.KerasTensor) for a in args]
        if kind in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide") and not kwargs:
            if len(args) != 2:
                self.unsupported(op, f"{len(args)} arguments")
            a, b = resolved
            if all(tensors):
                if kind in ("Divide", "TrueDivide"):
                    self.unsupported(op, "division of two tensors")
                return self.add(kind, {}, [a, b], name)
            if not any(tensors):
                self.unsupported(op, "no tensor argument")
            constant = b if tensors[0] else a
            if not np.isscalar(constant) and np.asarray(constant).size != 1:
                self.unsupported(op, "a non-scalar constant")
            c = float(np.asarray(constant).reshape(()))
            x = a if tensors[0] else b
            if kind == "Add":
                scale, offset = 1.0, c
            elif kind == "Subtract":
                scale, offset = (1.0, -c) if tensors[0] else (-1.0, c)
            elif kind == "Multiply":
                scale, offset = c, 0.0
            elif tensors[0]:
                scale, offset = 1.0 / c, 0.0
            else:
                self.unsupported(op, "a constant divided by a tensor")
            return self.add("Rescaling", {"scale": scale, "offset": offset}, x, name)
        if kind == "ReLU" and hasattr(op, "negative_slope"):  # keras.activations.relu(..., args)
            conf = {"max_value": _float_or_none(op.max_value),
                    "negative_slope": float(op.negative_slope), "threshold": float(op.threshold)}
            return self.add("ReLU", conf, resolved[0], name)
        if kind in _OP_ACTIVATIONS and len(args) == 1 and tensors[0]:
            return self.spell_activation(_OP_ACTIVATIONS[kind], resolved[0], name)
        if kind == "GetItem" and len(args) == 2 and tensors[0] and not tensors[1]:
            return self.add("BridgeSlice", {"key": encode_key(args[1])}, resolved[0], name)
        if kind == "Concatenate" and tensors == [False] and not kwargs:
            return self.add("Concatenate", {"axis": int(op.axis)}, resolved[0], name)
        if kind == "Mean" and tensors == [True] and not kwargs and self.spatial_axes(op.axis, resolved[0]):
            # keras-hub's squeeze-and-excite: ops.mean(x, axis=(1, 2), keepdims=True)
            return self.add("GlobalAveragePooling2D", {"keepdims": bool(op.keepdims)}, resolved[0], name)
        if kind == "Reshape" and tensors[:1] == [True]:
            return self.add("Reshape", {"target_shape": [int(d) for d in op.newshape][1:]},
                            resolved[0], name)
        self.unsupported(op, "this keras.ops operation")

    def spatial_axes(self, axis, x):
        """True when `axis` is exactly the height and width axes of the (B, H, W, C) tensor `x`."""
        shape = self.shapes.get(x)
        if shape is None or len(shape) != 3 or axis is None:
            return False
        return sorted(int(a) % 4 for a in axis) == [1, 2]

    # ------------------------------------------------------------ activations

    def activation_name(self, fn):
        """Name of a Keras 3 activation function (None for a layer or an unknown function)."""
        keras = self.keras
        if fn is None:
            return "linear"
        if isinstance(fn, str):
            return fn
        if isinstance(fn, keras.layers.Layer):
            return None
        name = getattr(fn, "__name__", None)
        try:
            if name and keras.activations.get(name) is fn:
                return {"swish": "silu", "hard_swish": "hard_silu"}.get(name, name)
        except (ValueError, TypeError):
            pass
        return None

    def recognise(self, fn):
        """The name of the known activation `fn` computes, by its values on a grid, or None."""
        keras = self.keras
        probe = np.linspace(-8.0, 8.0, 65).astype("float32")
        try:
            values = np.asarray(fn(keras.ops.convert_to_tensor(probe)))
        except Exception:  # noqa: BLE001 - a function we cannot run is not recognised
            return None
        for name in _PROBED_ACTIVATIONS:
            expected = np.asarray(keras.activations.get(name)(keras.ops.convert_to_tensor(probe)))
            if values.shape == expected.shape and np.allclose(values, expected, atol=1e-6):
                return name
        return None

    def activation(self, fn, x, name):
        """Emits activation `fn` (a Keras 3 activation function or layer) on tensor `x`."""
        keras = self.keras
        if isinstance(fn, keras.layers.Layer):
            return self.layer(fn, x, name + "_")
        known = self.activation_name(fn) or self.recognise(fn)
        if known is None:
            raise UnsupportedLayerError(
                f"Cannot convert activation {fn!r} of {name!r} to tf_keras: not a known activation."
            )
        return self.spell_activation(known, x, name)

    def spell_activation(self, known, x, name):
        if known == "linear":
            return x
        if known in _SAME_ACTIVATIONS:
            if known == "relu":
                return self.add("ReLU", {}, x, name)
            return self.add("Activation", {"activation": _SAME_ACTIVATIONS[known]}, x, name)
        if known == "relu6":
            return self.add("ReLU", {"max_value": 6.0}, x, name)
        if known == "leaky_relu":  # Keras 3's default negative slope
            return self.add("LeakyReLU", {"alpha": 0.2}, x, name)
        if known in ("hard_sigmoid", "hard_silu", "hard_swish"):
            # Keras 3: hard_sigmoid(x) = relu6(x + 3) / 6; hard_silu(x) = x * hard_sigmoid(x).
            y = self.add("Rescaling", {"scale": 1.0, "offset": 3.0}, x, name + "_add3")
            y = self.add("ReLU", {"max_value": 6.0}, y, name + "_relu6")
            y = self.add("Rescaling", {"scale": 1.0 / 6.0, "offset": 0.0}, y, name + "_div6")
            if known == "hard_sigmoid":
                return y
            return self.add("Multiply", {}, [x, y], name + "_mul")
        raise UnsupportedLayerError(f"Cannot convert activation {known!r} of {name!r} to tf_keras.")


# keras.ops / keras.activations op classes that are plain activations.
_OP_ACTIVATIONS = {
    "Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Tanh": "tanh", "Silu": "silu",
    "Swish": "silu", "HardSigmoid": "hard_sigmoid", "HardSilu": "hard_silu",
    "HardSwish": "hard_silu", "Gelu": "gelu", "Elu": "elu", "Selu": "selu", "Softplus": "softplus",
    "Softsign": "softsign",
}


def _pick(config, *keys):
    return {k: _jsonable(config[k]) for k in keys if k in config}


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _float_or_none(value):
    return None if value is None else float(value)
