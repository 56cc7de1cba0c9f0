"""Keras's SGD and Adam, each variable's update done by one fused TensorFlow kernel.

`keras.optimizers.SGD` and `Adam` build every variable's update from a dozen
small ops (casts, multiplies, reads, assigns), so a step's optimizer costs
about 13 graph ops per variable (SGD with momentum) or 30 (Adam), whatever the
variable's size. On a fast device those fixed costs, not the arithmetic,
decide the update's time, and a multi-branch network, with about twice the
variables of its main branch, pays them twice. These subclasses keep Keras's
update rule, arguments, variables, serialization, loss scaling, weight decay
and distribution, and run each variable's update as the single kernel
`tf.keras` used (`ResourceApplyKerasMomentum`, `ResourceApplyAdam`). Where no
kernel applies (another backend, no momentum, AMSGrad), they are Keras's.

Example:
```python
model = mbakt_tf.MBAKT.from_backbone("small_resnet8", 10, (28, 28, 1))
model.compile(g_optimizer=mbakt_tf.optimizers.SGD(0.05, momentum=0.9, nesterov=True))
```
"""

import keras
import tensorflow as tf


def _tensorflow_variable(variable):
    """The `tf.Variable` behind a Keras variable (or the variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


@keras.saving.register_keras_serializable(package="mbakt_tf")
class SGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum update is one `ResourceApplyKerasMomentum` per variable.

    The same rule as Keras's: `m = momentum * m - lr * g`, then `w += m`, or
    with `nesterov=True`, `w += momentum * m - lr * g`.

    Example:
    ```python
    optimizer = mbakt_tf.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    ```
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        variable = _tensorflow_variable(variable)
        momentum = _tensorflow_variable(self.momentums[self._get_variable_index(variable)])
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=momentum.handle,
            lr=tf.cast(learning_rate, variable.dtype),
            grad=tf.cast(gradient, variable.dtype),
            momentum=tf.cast(self.momentum, variable.dtype),
            use_nesterov=self.nesterov,
        )


@keras.saving.register_keras_serializable(package="mbakt_tf")
class Adam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose update is one `ResourceApplyAdam` per variable (not with AMSGrad).

    Example:
    ```python
    optimizer = mbakt_tf.optimizers.Adam(2e-4, beta_1=0.5)
    ```
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        variable = _tensorflow_variable(variable)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=_tensorflow_variable(self._momentums[index]).handle,
            v=_tensorflow_variable(self._velocities[index]).handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
