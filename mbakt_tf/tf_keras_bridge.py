"""Keras 3 main branch -> an equivalent tf_keras (Keras 2) model, through files.

The bridge now lives in the tfmot wing, split by the process each part runs
in (docs/optimize.md): `mbakt_tf.tfmot.describe`
(Keras 3 side: `describe`, `write_bridge`), `mbakt_tf.tfmot.handoff` (the
folder's format: `read_bridge`, `PARITY_ATOL`, the errors) and
`mbakt_tf.tfmot.rebuild` (tf_keras side: `load_bridge`, `build_tf_keras`).
This module keeps the names importable from their first home. Importing it
loads no Keras (the describer imports keras when it runs).

Example:
```python
# Keras 3 process
from mbakt_tf import tf_keras_bridge
tf_keras_bridge.write_bridge(mbakt_model.main_model(), "work/bridge")
# tf_keras process (e.g. after `import tensorflow_model_optimization`)
model, parity = tf_keras_bridge.load_bridge("work/bridge")   # raises BridgeParityError if off
parity["max_abs_diff"]                                         # e.g. 2.4e-07
```
"""

from mbakt_tf.tfmot.describe import describe, write_bridge  # noqa: F401
from mbakt_tf.tfmot.handoff import (  # noqa: F401
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILE,
    PARITY_ATOL,
    PROBE_FILE,
    WEIGHTS_FILE,
    BridgeParityError,
    UnsupportedLayerError,
    read_bridge,
)
from mbakt_tf.tfmot.rebuild import build_tf_keras, custom_objects, load_bridge, parity  # noqa: F401
