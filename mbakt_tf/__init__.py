"""mbakt_tf: Multi-Branched Adversarial Knowledge Transfer for Keras 3 / TensorFlow.

Example:
```python
import keras, mbakt_tf
model = mbakt_tf.MBAKT.from_backbone("small_resnet8", num_classes=10, input_shape=(28, 28, 1))
model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
```
"""

from mbakt_tf import backbones, branches, discriminator, losses
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.model import MBAKT
from mbakt_tf.segmentation_model import MBAKTSegmenter

__version__ = "0.1.0"

__all__ = ["MBAKT", "MBAKTConfig", "MBAKTSegmenter", "backbones", "branches", "discriminator", "losses"]
