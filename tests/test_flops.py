import keras
import pytest

import mbakt_tf
from mbakt_tf import flops


def single_layer_model(layer, input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize(
    "layer, input_shape, expected",
    [
        # 8x8 outputs * 4 filters * (3*3*3) taps * 2 FLOPs per multiply-add.
        (keras.layers.Conv2D(4, 3, padding="same", use_bias=False), (8, 8, 3), 8 * 8 * 4 * 27 * 2),
        # Stride 2, valid: 3x3 outputs.
        (keras.layers.Conv2D(2, 3, strides=2), (8, 8, 1), 3 * 3 * 2 * 9 * 2),
        (keras.layers.Dense(10), (64,), 64 * 10 * 2),
        (keras.layers.DepthwiseConv2D(3, padding="same"), (8, 8, 5), 8 * 8 * 5 * 9 * 2),
        # Depthwise 8*8*4*9 plus pointwise 8*8*4*6 multiply-adds.
        (keras.layers.SeparableConv2D(6, 3, padding="same"), (8, 8, 4), 2 * (8 * 8 * 4 * 9 + 8 * 8 * 4 * 6)),
        (keras.layers.BatchNormalization(), (4, 4, 2), 2 * 32),
        (keras.layers.GlobalAveragePooling2D(), (4, 4, 3), 48),
        (keras.layers.ReLU(), (4, 4, 3), 0),
    ],
)
def test_known_layer_counts(layer, input_shape, expected):
    assert flops.count_flops(single_layer_model(layer, input_shape)) == expected


def test_main_branch_costs_exactly_the_plain_network():
    plain = mbakt_tf.MBAKT.from_backbone(
        "small_resnet8", 10, (28, 28, 1), config=mbakt_tf.MBAKTConfig(mode="plain")
    )
    mbakt = mbakt_tf.MBAKT.from_backbone("small_resnet8", 10, (28, 28, 1))  # peers
    exits = mbakt_tf.MBAKT.from_backbone("small_resnet8", 10, (28, 28, 1), config=mbakt_tf.MBAKTConfig(branch_design="exit"))
    plain_flops = flops.count_flops(plain.main_model())
    assert plain_flops > 10_000_000
    assert flops.count_flops(mbakt.main_model()) == plain_flops == flops.count_flops(exits.main_model())
    assert flops.count_flops(mbakt.network) > flops.count_flops(exits.network) > plain_flops
    assert flops.count_flops(mbakt.branch_model("branch_1")) == plain_flops  # a peer: the same network
    assert flops.count_flops(exits.branch_model("branch_1")) < plain_flops  # an early exit: cheaper


def test_nested_sequential_is_counted():
    inner = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same", use_bias=False), keras.layers.ReLU()])
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(inner(inputs)))
    assert flops.count_flops(model) == 8 * 8 * 4 * 27 * 2 + 8 * 8 * 2 * 4 * 2


def test_keras_cv_backbones_are_counted():
    for name in ("cspdarknet_tiny", "mobilenet_v3_small"):
        model = mbakt_tf.MBAKT.from_backbone(name, 10, (32, 32, 3), config=mbakt_tf.MBAKTConfig(mode="plain"))
        assert flops.count_flops(model.main_model()) > 1_000_000
