"""`MBAKT`: Multi-Branched Adversarial Knowledge Transfer for image classification."""

import dataclasses
import logging

import keras

from mbakt_tf import backbones as backbones_lib
from mbakt_tf import branches as branches_lib
from mbakt_tf.branches import ENSEMBLE  # noqa: F401 (part of this module's interface)
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.discriminator import discriminator_input_channels, vector_discriminator
from mbakt_tf.multi_branch_model import MultiBranchModel

logger = logging.getLogger(__name__)

# The no-harm matrix (docs/no_harm.md): a keras-cv CSPDarkNet classifier on 32x32 images, whose last
# stage gives 1x1 maps: peers below plain (the matrix's only losing cell), exit heads above it on every
# seed. Other families with a 1x1 last stage (ResNet18, MobileNetV3 at 32x32) were not measured.
ONE_PIXEL_PEERS = ("peers copy the last stage, whose maps are 1x1 on this CSPDarkNet and input: on a keras-cv "
                   "CSPDarkNet classifier at 32x32 they scored 0.729 test accuracy against plain's 0.787 and "
                   "exit heads' 0.999 (mean of 5 seeds, docs/no_harm.md)")


class DesignRefusedError(ValueError):
    """A branch design the library refuses on this backbone, with the measured reason."""


@keras.saving.register_keras_serializable(package="mbakt_tf")
class MBAKT(MultiBranchModel):
    """Multi-Branched Adversarial Knowledge Transfer for image classification.

    Wraps a multi-branch network (see `branches.build_multi_branch_network`)
    and a discriminator. `train_step` runs one forward pass of the network,
    updates the discriminator on stop-gradient outputs, then updates the
    network with the generator loss of `MBAKTConfig`. `test_step` reports
    every branch's and the ensemble's accuracy and loss. Calling the model
    returns the main branch's logits; `main_model()` cuts the main branch out.

    Example:
    ```python
    model = mbakt_tf.MBAKT.from_backbone(
        "small_resnet8", num_classes=10, input_shape=(28, 28, 1),
        config=mbakt_tf.MBAKTConfig(mode="mbakt"))
    model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  d_optimizer=keras.optimizers.Adam(2e-4))
    model.fit(train_ds, validation_data=val_ds, epochs=3)
    model.evaluate(val_ds, return_dict=True)["main_accuracy"]
    main = model.main_model()   # plain keras.Model(image -> logits)
    ```
    """

    @classmethod
    def from_backbone(
        cls, backbone, num_classes, input_shape=None, config=None, task="classification", name=None,
        **task_kwargs,
    ):
        """Builds the model on a named backbone or a keras-cv / keras-hub backbone object.

        Args:
            backbone: a name from `backbones.available_backbones()`, a built
                keras-cv or keras-hub backbone object (see
                `backbones.check_backbone`), or any functional model with
                `pyramid_level_inputs` and a static input shape.
            num_classes: number of classes.
            input_shape: `(height, width, channels)`; required with a name.
            config: an `MBAKTConfig`; defaults to `MBAKTConfig()`.
            task: `"classification"`, or another task of `tasks.TASKS`, whose
                model this returns: `"segmentation"` gives an
                `mbakt_tf.segmentation_model.MBAKTSegmenter` (encoder-decoder)
                and accepts its `task_kwargs` (`ignore_label`,
                `decoder_channels`).
        """
        if task != "classification":
            from mbakt_tf import tasks  # the other tasks' models, by name

            named = {} if name is None else {"name": name}  # else the task's own default name
            return tasks.get_task(task).model_class().from_backbone(
                backbone, num_classes, input_shape=input_shape, config=config, **named, **task_kwargs
            )
        if task_kwargs:
            raise ValueError(f"Unexpected arguments for task='classification': {sorted(task_kwargs)}.")
        config = config or MBAKTConfig()
        backbone = backbones_lib.resolve_backbone(backbone, input_shape)
        config = classification_design(config, backbone)
        network = branches_lib.build_multi_branch_network(
            backbone,
            num_classes,
            branch_stages=config.branch_stages,
            with_branches=config.uses_branches,
            adaptation=config.adaptation,
            branch_design=config.resolved_branch_design("classification"),
            peer_stages=config.peer_stages,
            num_peers=config.num_peers,
            gated=config.uses_gate,
            gate_main_weight=config.gate_main_weight,
        )
        discriminator = None
        if config.uses_adversary:
            discriminator = vector_discriminator(
                discriminator_input_channels(config, network, num_classes), config.discriminator_units
            )
        return cls(network, discriminator, config, name=name or "mbakt")


def classification_design(config, backbone):
    """`config` with the branch design the classifier is built with on `backbone`.

    The default design is `peer`, except on a keras-cv CSPDarkNet whose last stage gives 1x1 maps:
    there peers lose to plain and exit heads do not (`ONE_PIXEL_PEERS`), so the default becomes
    `branch_design="exit"` (logged at INFO level, and kept in the model's config), and an explicit
    `branch_design="peer"` is refused (`DesignRefusedError`) with that reason. Only where it was
    measured: other families with a 1x1 last stage keep peers.

    Example:
    >>> import keras_cv
    >>> backbone = keras_cv.models.CSPDarkNetBackbone(stackwise_channels=[8, 16, 24, 32],
    ...     stackwise_depth=[1, 1, 1, 1], include_rescaling=True, input_shape=(32, 32, 3))
    >>> classification_design(MBAKTConfig(), backbone).branch_design
    'exit'
    """
    if not config.uses_branches or config.resolved_branch_design("classification") != "peer":
        return config
    if type(backbone).__name__ != "CSPDarkNetBackbone":
        return config
    if tuple(backbones_lib.stage_outputs(backbone)[-1].shape[1:3]) != (1, 1):
        return config
    if config.branch_design == "peer":
        raise DesignRefusedError(
            f"branch_design='peer': {ONE_PIXEL_PEERS}. Use branch_design='exit' (the default here), or "
            "larger images.")
    logger.info("The default branch design here is 'exit', not 'peer': %s.", ONE_PIXEL_PEERS)
    return dataclasses.replace(config, branch_design="exit")
