"""RGB input for models trained on another number of channels (e.g. grayscale Fashion-MNIST).

MediaPipe Tasks (`ImageClassifier`, `ImageSegmenter`) feed a model RGB
images only: a 28x28x1 model needs a 3-channel input. `with_rgb_input`
puts a weight-free `RGBToModelChannels` layer in front of the model: for one
channel, the ITU-R BT.601 luma `0.299 R + 0.587 G + 0.114 B` (the weights of
`tf.image.rgb_to_grayscale`), which is the pixel itself on a gray image
(R = G = B); three channels pass through unchanged. It converts to the
builtin TFLite ops MUL and SUM, adds no parameter, and keeps the [0, 255]
input range. `to_rgb` makes the gray images the model was tested on into
the RGB images the converted model takes.

Example:
```python
from mbakt_tf.export import rgb_input
rgb_model = rgb_input.with_rgb_input(keras_model)   # (None, 28, 28, 1) -> (None, 28, 28, 3)
rgb_model(rgb_input.to_rgb(x_test[:8]))             # equals keras_model(x_test[:8])
```
"""

import keras
import numpy as np

# ITU-R BT.601 luma weights (tf.image.rgb_to_grayscale uses the same).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
CONVERSION = "BT.601 luma {:g} R + {:g} G + {:g} B (TFLite MUL and SUM)".format(*LUMA_WEIGHTS)
RGB_CHANNELS = 3


def check_channels(channels):
    """`ValueError` unless a model with `channels` input channels can take RGB."""
    if channels not in (1, RGB_CHANNELS):
        raise ValueError(
            f"rgb_input needs a model whose input has 1 (grayscale) or 3 (RGB) channels; this one "
            f"has {channels}. Export it without rgb_input (MediaPipe Tasks cannot run it then)."
        )


@keras.saving.register_keras_serializable(package="mbakt_tf")
class RGBToModelChannels(keras.layers.Layer):
    """RGB (..., 3) to `channels` channels: BT.601 luma for 1, unchanged for 3. No weights.

    Example:
    >>> import numpy as np
    >>> layer = RGBToModelChannels(1)
    >>> float(layer(np.full((1, 1, 1, 3), 200.0, "float32"))[0, 0, 0, 0])
    200.0
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        check_channels(channels)
        self.channels = int(channels)

    def call(self, images):
        if self.channels == RGB_CHANNELS:
            return images
        weights = keras.ops.convert_to_tensor(LUMA_WEIGHTS, dtype=images.dtype)
        return keras.ops.sum(images * weights, axis=-1, keepdims=True)  # TFLite MUL + SUM

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


def with_rgb_input(keras_model, name=None):
    """`keras_model` behind `RGBToModelChannels`: it takes (H, W, 3) RGB in [0, 255].

    A model that already takes 3 channels is returned as it is.

    Raises:
        ValueError: the model's input has neither 1 nor 3 channels.
    """
    height, width, channels = (int(d) for d in keras_model.input.shape[1:])
    check_channels(channels)
    if channels == RGB_CHANNELS:
        return keras_model
    images = keras.Input((height, width, RGB_CHANNELS), name="rgb_images")
    outputs = keras_model(RGBToModelChannels(channels, name="rgb_to_model_channels")(images))
    return keras.Model(images, outputs, name=name or keras_model.name)


def to_rgb(images):
    """(N, H, W, 1) gray images as (N, H, W, 3) with R = G = B; RGB images unchanged."""
    images = np.asarray(images)
    check_channels(images.shape[-1])
    return images if images.shape[-1] == RGB_CHANNELS else np.repeat(images, RGB_CHANNELS, axis=-1)
