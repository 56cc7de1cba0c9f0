"""The tfmot wing: QAT and pruning of a Keras 3 model through tf_keras, in two processes.

tensorflow-model-optimization (tfmot) works only on tf_keras (Keras 2) models
and, once imported, switches TensorFlow to legacy Keras (`TF_USE_LEGACY_KERAS=1`),
after which Keras 3 and keras-cv no longer work in that process. So the work
is split over two processes that never share one, and the modules say which
side they belong to:

Keras 3 process (`mbakt_tf.optimize` orchestrates):
  describe.py   the main branch's functional graph as a flat tf_keras description
  teacher.py    the fine-tuning epochs and the teacher's logits on them
  launch.py     finds the Python with tfmot (`.venv-optimize`), runs the worker there
Both (the format, numpy and the standard library only):
  handoff.py    the files one side writes and the other reads (bridge folder, epochs, job, result)
tfmot process (`python -m mbakt_tf.tfmot.worker job.json`):
  rebuild.py    the description back as a tf_keras model, checked against the Keras 3 outputs
  worker.py     QAT, pruning, fine-tuning with distillation, the TFLite files, the result

This `__init__` imports nothing, so either side imports only its own modules.

Example:
```python
from mbakt_tf.tfmot import describe, launch
describe.write_bridge(model.main_model(), "/tmp/work/bridge")
(parity,) = launch.check_bridges(["/tmp/work/bridge"], "/tmp/work")
```
"""
