"""Inference cost of a functional Keras model: FLOPs per image, counted layer by layer.

Counts multiply-adds of convolutions and dense layers (2 FLOPs each) and one
FLOP per output element of batch normalization, element-wise merges and
pooling; activations and reshapes are free. The same rule applied to two
models makes them comparable, which is what the counter is for.

Example:
>>> import keras
>>> inputs = keras.Input((8, 8, 3))
>>> model = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs))
>>> count_flops(model)  # 8*8 positions * 4 filters * 3*3*3 taps * 2
13824
"""

import numpy as np
import keras


def _size(shape):
    return int(np.prod([d for d in shape[1:] if d is not None]))


def _layer_flops(layer, input_shapes, output_shape):
    out = _size(output_shape)
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        in_channels = input_shapes[0][-1]
        spatial = _size(output_shape) // output_shape[-1]
        depthwise = spatial * in_channels * layer.depth_multiplier * kh * kw
        pointwise = spatial * in_channels * layer.depth_multiplier * output_shape[-1]
        return 2 * (depthwise + pointwise)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return 2 * out * kh * kw
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        in_channels = input_shapes[0][-1] // layer.groups
        return 2 * out * kh * kw * in_channels
    if isinstance(layer, keras.layers.Dense):
        return 2 * out * input_shapes[0][-1]
    if isinstance(layer, keras.layers.BatchNormalization):
        return 2 * out
    if isinstance(layer, (keras.layers.Add, keras.layers.Multiply, keras.layers.Subtract)):
        return out * (len(input_shapes) - 1)
    if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
        return _size(input_shapes[0])
    if isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)):
        return out * int(np.prod(layer.pool_size))
    return 0


def _shapes(tensors):
    if isinstance(tensors, dict):
        tensors = list(tensors.values())
    if not isinstance(tensors, (list, tuple)):
        tensors = [tensors]
    return [tuple(t.shape) for t in tensors]


def flops_by_layer(model):
    """[(layer name, FLOPs per image)] for every layer the model's outputs depend on."""
    rows = []
    for node in _nodes_in_use(model):
        layer = node.operation
        if isinstance(layer, keras.Model):
            rows += [(f"{layer.name}/{name}", f) for name, f in flops_by_layer(layer)]
            continue
        input_shapes = _shapes(node.input_tensors)
        output_shape = _shapes(node.output_tensors)[0]
        rows.append((layer.name, _layer_flops(layer, input_shapes, output_shape)))
    return rows


def _nodes_in_use(model):
    """Operation nodes between the model's inputs and outputs (those that run)."""
    if isinstance(model, keras.Sequential):
        model = model._functional  # a Sequential keeps its graph in a Functional
    seen, ordered = set(), []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if id(node) in seen or node.operation is None:
                continue
            if isinstance(node.operation, keras.layers.InputLayer):
                continue
            seen.add(id(node))
            ordered.append(node)
    return ordered


def count_flops(model):
    """Total FLOPs for one image through `model` (a functional Keras model)."""
    return int(sum(f for _, f in flops_by_layer(model)))
