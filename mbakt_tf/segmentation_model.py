"""`MBAKTSegmenter`: MBAKT for encoder-decoder semantic segmentation.

The sibling of the classifier `model.MBAKT`: the same training step
(`multi_branch_model.MultiBranchModel`: one forward pass, discriminator update,
generator update, the same losses and weights); what differs is per pixel:

* the network is `segmentation.build_segmentation_network` (a decoder over the
  backbone's stages, every head predicting a full-resolution map);
* labels are integer maps (B, H, W); pixels equal to `ignore_label` count in
  no loss (ce and kd are means over the other pixels), no metric, and are
  hidden from the discriminator;
* the hint compares (adapted) decoder features of each branch with the main
  branch's final decoder features;
* the discriminator is a fully convolutional PatchGAN over logit or
  probability maps (or decoder feature maps with
  `adversarial_input="features"`): one real/fake score per patch;
* metrics: `<head>_accuracy` is pixel accuracy, `<head>_miou` the mean
  intersection-over-union over classes (confusion matrix accumulated over the
  whole epoch / evaluation, classes absent from both labels and predictions
  left out), for every branch and the ensemble.

Example:
```python
model = mbakt_tf.MBAKT.from_backbone(
    "small_resnet8", num_classes=11, input_shape=(28, 28, 1), task="segmentation",
    config=mbakt_tf.MBAKTConfig(mode="mbakt"))
model.compile(g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
model.fit(splits.train, validation_data=splits.validation, epochs=3)   # (image, mask) batches
model.evaluate(splits.test, return_dict=True)["main_miou"]
main = model.main_model()   # plain encoder-decoder: image -> (B, H, W, classes) logits
```
"""

import keras
from keras import ops

from mbakt_tf import backbones as backbones_lib
from mbakt_tf import branches as branches_lib
from mbakt_tf import segmentation
from mbakt_tf.config import MBAKTConfig
from mbakt_tf.discriminator import discriminator_input_channels, patch_discriminator
from mbakt_tf.multi_branch_model import MultiBranchModel


@keras.saving.register_keras_serializable(package="mbakt_tf")
class MBAKTSegmenter(MultiBranchModel):
    """MBAKT over an encoder-decoder: per-pixel losses, PatchGAN discriminator, mIoU.

    Args:
        network: a network from `segmentation.build_segmentation_network`.
        discriminator: a PatchGAN (`discriminator.patch_discriminator`), or
            None without an adversary.
        config: an `MBAKTConfig` (the same fields as for classification).
        ignore_label: label value of pixels to ignore (e.g. 255 for
            "unknown"/border pixels), or None. Must not be a class index.
    """

    LABEL_AXES = ("batch", "height", "width")  # label maps: one class per pixel

    def __init__(self, network, discriminator=None, config=None, ignore_label=None, **kwargs):
        num_classes = int(network.output[f"{branches_lib.MAIN}_logits"].shape[-1])
        if ignore_label is not None:
            ignore_label = int(ignore_label)
            if 0 <= ignore_label < num_classes:
                raise ValueError(
                    f"ignore_label={ignore_label} is a class index (num_classes={num_classes}): "
                    "use a value outside [0, num_classes), e.g. 255."
                )
        self.ignore_label = ignore_label  # read by _build_trackers during super().__init__
        super().__init__(network, discriminator, config, **kwargs)

    @classmethod
    def from_backbone(
        cls, backbone, num_classes, input_shape=None, config=None, task="segmentation",
        name="mbakt_segmenter", ignore_label=None, decoder_channels=None,
    ):
        """Builds the segmenter on a named backbone or a keras-cv / keras-hub backbone object.

        Args:
            backbone, input_shape, config: as for `model.MBAKT.from_backbone`.
            num_classes: classes per pixel, background included.
            task: must be `"segmentation"`.
            ignore_label: see the class doc.
            decoder_channels: see `segmentation.resolve_decoder_channels`.
        """
        if task != "segmentation":
            raise ValueError(f"MBAKTSegmenter is for task='segmentation', got {task!r}.")
        config = config or MBAKTConfig()
        network = segmentation.build_segmentation_network(
            backbones_lib.resolve_backbone(backbone, input_shape),
            num_classes,
            branch_stages=config.branch_stages,
            with_branches=config.uses_branches,
            adaptation=config.adaptation,
            decoder_channels=decoder_channels,
            gated=config.uses_gate,
            gate_main_weight=config.gate_main_weight,
            branch_design=config.resolved_branch_design("segmentation"),
            peer_stages=config.peer_stages,
            num_peers=config.num_peers,
        )
        discriminator = None
        if config.uses_adversary:
            discriminator = patch_discriminator(
                discriminator_input_channels(config, network, num_classes), config.discriminator_units,
                name="discriminator",
            )
        return cls(network, discriminator, config, ignore_label=ignore_label, name=name)

    # ----------------------------------------------------------------- metrics

    def _build_trackers(self):
        super()._build_trackers()
        self.miou_trackers = {
            head: keras.metrics.MeanIoU(
                self.num_classes, name=f"{head}_miou", ignore_class=self.ignore_label,
                sparse_y_pred=False,
            )
            for head in self.accuracy_trackers
        }

    @property
    def metrics(self):
        return super().metrics + list(self.miou_trackers.values())

    def _train_metric_names(self):
        return super()._train_metric_names() + [f"{head}_miou" for head in self.miou_trackers]

    def _check_label_shape(self, images, labels):
        image_size, label_size = tuple(images.shape[1:3]), tuple(labels.shape[1:3])
        if None not in image_size + label_size and image_size != label_size:
            raise ValueError(f"Label maps {label_size} and images {image_size} differ in size.")

    def _valid_pixels(self, labels):
        if self.ignore_label is None:
            return None
        return ops.cast(ops.not_equal(labels, self.ignore_label), "float32")

    def _update_accuracy(self, labels, logits, ensemble):
        """Pixel accuracy and mIoU of every head, ignored pixels left out."""
        heads = self._heads(logits, ensemble)
        valid = self._valid_pixels(labels)
        for head, z in heads.items():
            self.accuracy_trackers[head].update_state(labels, z, sample_weight=valid)
            self.miou_trackers[head].update_state(labels, z)
        return heads

    def test_step(self, data):
        results = super().test_step(data)
        results.update({f"{head}_miou": self.miou_trackers[head].result() for head in self.miou_trackers})
        return results

    # ------------------------------------------------------------------- steps

    def _adversary_inputs(self, outputs, logits, teacher):
        """(real, [fake per branch]) maps: logit or probability maps, or decoder feature maps."""
        if self.config.adversarial_input != "features":
            return super()._adversary_inputs(outputs, logits, teacher)  # per pixel, last axis
        features = [ops.cast(outputs[f"{b}_features"], "float32") for b in self.branch_names]
        return ops.stop_gradient(ops.mean(ops.stack(features, 0), 0)), features

    def _discriminator_view(self, inputs, labels):
        """Maps with ignored pixels zeroed (the adversary, like every loss, leaves them out), then
        label-conditioned. Without this the adversary is the only force on the ignored outlines."""
        valid = self._valid_pixels(labels)
        if valid is not None:
            inputs = inputs * ops.expand_dims(valid, -1)
        return super()._discriminator_view(inputs, labels)

    # ----------------------------------------------------------- serialization

    def get_config(self):
        config = super().get_config()
        config["ignore_label"] = self.ignore_label
        return config
