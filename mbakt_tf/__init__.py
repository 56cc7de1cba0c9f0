"""mbakt_tf: Multi-Branched Adversarial Knowledge Transfer for Keras 3 / TensorFlow.

`import mbakt_tf` is light: the model classes and every submodule load on
first use (`mbakt_tf.MBAKT`, `mbakt_tf.export`, ...), so scripts answer
`--help` and usage errors before TensorFlow loads.

Example:
```python
import keras, mbakt_tf
model = mbakt_tf.MBAKT.from_backbone("small_resnet8", num_classes=10, input_shape=(28, 28, 1))
model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
```

Keras finds the model classes of a `.keras` file once they are registered:
when Keras was imported before `mbakt_tf` (`import keras` then `import
mbakt_tf`, the usual order), they are registered on import, since Keras and
TensorFlow are loaded anyway; otherwise, after the first use of
`mbakt_tf.MBAKT` (or `mbakt_tf.saved_runs.load_mbakt_model`).
"""

import sys

from mbakt_tf import lazy_names

__version__ = "0.1.0"

# Top-level names and the module that defines each.
_CLASSES = {
    "MBAKT": "mbakt_tf.model",
    "MBAKTConfig": "mbakt_tf.config",
    "MBAKTSegmenter": "mbakt_tf.segmentation_model",
}
__getattr__, __dir__, __all__ = lazy_names.lazy_package(__name__, __path__, _CLASSES, globals())


if "keras" in sys.modules:  # Keras is loaded already: register the classes for keras.models.load_model
    for _name in _CLASSES:
        __getattr__(_name)
