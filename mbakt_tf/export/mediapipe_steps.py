"""The MediaPipe Tasks part of an export: TFLite Metadata in every file, checked through the Tasks API.

`exporter._Export` inherits these steps. MediaPipe runs in its own virtualenv
(`mediapipe_tasks.py`): one process writes the metadata (labels, input
normalisation mean 0 std 1, image type) into every TFLite file and runs each
through `ImageClassifier` / `ImageSegmenter` on the test images; here its
classes are compared with LiteRT's on the same file and uint8 images, and the
manifest's `"mediapipe"` part and checks are filled in.

Example (what an export records; see `export.export_model`):
```python
manifest["mediapipe"]["int8"]     # {"ran": True, "agreement": 1.0} or {"ran": False, "reason": ..., "hint": ...}
print("\n".join(mediapipe_lines(manifest["mediapipe"])))
```
"""

import numpy as np

from mbakt_tf.export import mediapipe_tasks, rgb_input


class MediaPipeSteps:
    """Export steps for TFLite Metadata and MediaPipe Tasks (mixed into `exporter._Export`)."""

    def find_mediapipe(self):
        """The MediaPipe Python, before any work; `None` (and the reason kept) when there is none."""
        mode = self.config.tflite_metadata
        self.mediapipe_reason = None
        if mode == "off" or not self.config.formats:
            self.mediapipe_reason = ("tflite_metadata='off'" if mode == "off"
                                     else "no TFLite file requested")
            return None
        try:
            self.mediapipe_python = mediapipe_tasks.mediapipe_python(self.config.mediapipe_python)
        except mediapipe_tasks.MediaPipeUnavailableError as error:
            if mode == "require":
                raise
            self.mediapipe_reason = f"not written (tflite_metadata='auto'): {error}"
            self.say(f"TFLite Metadata: {self.mediapipe_reason}")
        return self.mediapipe_python

    def tflite_metadata(self, class_names):
        """Writes TFLite Metadata into every TFLite file and runs each in MediaPipe Tasks (one process)."""
        if self.mediapipe_python is None:
            return
        task = "segmenter" if self.segmentation else "classifier"
        # MediaPipe takes uint8 images: LiteRT is compared on the same ones.
        self.mediapipe_images = np.clip(np.round(self.test_file_images), 0, 255).astype(np.uint8)
        h, w, c = self.file_input_shape
        specs = [{"key": fmt, "path": self.files[fmt], "task": task, "labels": list(class_names),
                  "model_name": self.keras_model.name,
                  "description": f"mbakt_tf {self.branch} ({task}): {h}x{w}x{c} raw pixels in [0, 255]"}
                 for fmt in self.config.formats]
        api = mediapipe_tasks.TASK_API[task]
        self.say(f"TFLite Metadata: labels, normalisation (mean 0, std 1), image type into "
                 f"{len(specs)} file(s); MediaPipe Tasks {api} on {len(self.mediapipe_images)} images")
        try:
            self.mediapipe = mediapipe_tasks.embed_and_run(specs, self.mediapipe_images,
                                                           python=self.mediapipe_python)
        except RuntimeError as error:  # the files are as converted: say so, fail the check
            self.mediapipe_reason = f"the MediaPipe process failed: {error}"
            self.checks.add("tflite_metadata_written", False, self.mediapipe_reason[-300:])
            return
        self.class_names = [str(n) for n in class_names]

    def _metadata_doc(self, fmt):
        if self.mediapipe is None:
            self.docs[fmt]["tflite_metadata"] = {"written": False, "reason": self.mediapipe_reason}
            return
        written = self.mediapipe["files"][fmt]["metadata"]
        if not written["written"]:
            self.docs[fmt]["tflite_metadata"] = {"written": False, "reason": written["error"]}
            self.checks.add(f"{fmt}_tflite_metadata", False, f"not written: {written['error']}")
            return
        subgraph = written["json"]["subgraph_metadata"][0]
        image = subgraph["input_tensor_metadata"][0]
        normalization = image["process_units"][0]["options"]
        self.docs[fmt]["tflite_metadata"] = {
            "written": True,
            "bytes_added": written["bytes_added"],
            "min_parser_version": written["json"].get("min_parser_version"),
            "input": {"color_space": image["content"]["content_properties"].get("color_space"),
                      "normalization": normalization},
            "outputs": [o["name"] for o in subgraph["output_tensor_metadata"]],
            "associated_files": written["associated_files"],
            "labels": f"{mediapipe_tasks.LABELS_FILE} packed in the file, {len(written['labels'] or [])} lines",
        }
        ok = (written["labels"] == self.class_names and normalization == {"mean": [0.0], "std": [1.0]}
              and written["outputs"] == [o["name"] for o in subgraph["output_tensor_metadata"]])
        self.checks.add(f"{fmt}_tflite_metadata", ok,
                        f"read back: {len(written['labels'] or [])} labels "
                        f"{'equal' if written['labels'] == self.class_names else 'differ from'} the class "
                        f"names, normalisation {normalization}, outputs {written['outputs']}")

    def _mediapipe_hint(self, structure):
        """What would make MediaPipe Tasks run this file (every fix that applies), or None."""
        fixes = []
        if self.file_input_shape[-1] != rgb_input.RGB_CHANNELS:
            fixes.append("MediaPipe Tasks take RGB images: export with rgb_input=True (--rgb_input)")
        if structure["input"]["dtype"] == "int8":
            fixes.append("MediaPipe Tasks take uint8 or float32 input: export with int8_io='uint8' "
                         "(--int8_io=uint8)")
        return "; ".join(fixes) or None

    def _mediapipe_agreement(self, fmt, structure, lite, outputs):
        """MediaPipe's classes (per pixel for a segmenter) against LiteRT's on the same uint8 images."""
        if self.mediapipe is None or not self.mediapipe["files"][fmt]["metadata"]["written"]:
            return
        doc = self.mediapipe["files"][fmt]
        tasks = doc["tasks"]
        if not tasks["ran"]:
            self.evaluation[fmt]["mediapipe"] = {"api": tasks["api"], "ran": False, "reason": tasks["error"],
                                                 "hint": self._mediapipe_hint(structure)}
            return
        if not np.array_equal(self.mediapipe_images, self.test_file_images):
            outputs = lite.predict(self.mediapipe_images)  # LiteRT on MediaPipe's uint8 images
        figures = {"api": tasks["api"], "ran": True, "images": tasks["images"],
                   "mediapipe_version": self.mediapipe["versions"]["mediapipe"]}
        if self.segmentation:
            # MediaPipe's category mask is the argmax of the output its metadata names the mask.
            mask_output = self.docs[fmt]["tflite_metadata"]["outputs"][
                mediapipe_tasks.SEGMENTER_MASK_POSITION if len(outputs) == 2 else 0]
            figures.update(output=mask_output, **mediapipe_tasks.segmenter_agreement(
                doc["outputs"]["category_mask"], outputs[mask_output]))
            agreement = figures["pixel_agreement"]
        else:
            figures["heads"] = {
                head: mediapipe_tasks.classifier_agreement(
                    doc["outputs"][f"{head}_index"], doc["outputs"][f"{head}_score"], outputs[head])
                for head in outputs}
            agreement = min(h["top1_agreement"] for h in figures["heads"].values())
            figures["top1_agreement"] = agreement
        self.evaluation[fmt]["mediapipe"] = figures
        limit = self.config.min_mediapipe_agreement
        unit = "pixels" if self.segmentation else "images"
        self.checks.add(f"{fmt}_mediapipe_agrees_with_litert", agreement >= limit,
                        f"{tasks['api']}: {agreement:.4f} of {tasks['images']} {unit} >= {limit}")

    def mediapipe_summary(self):
        """The manifest's "mediapipe" part: versions, images, and per file agreement or reason."""
        summary = {"tflite_metadata": self.config.tflite_metadata,
                   "written": self.mediapipe is not None}
        if self.mediapipe is None:
            summary["reason"] = self.mediapipe_reason
            return summary
        task = "segmenter" if self.segmentation else "classifier"
        summary.update(
            mediapipe_version=self.mediapipe["versions"]["mediapipe"],
            python=self.mediapipe["versions"]["python"],
            api=mediapipe_tasks.TASK_API[task],
            images=int(len(self.mediapipe_images)),
            normalization={"mean": mediapipe_tasks.NORM_MEAN, "std": mediapipe_tasks.NORM_STD},
            agreement_measure=("pixels" if self.segmentation else "images")
            + " whose MediaPipe class has LiteRT's highest score on the same file and uint8 image "
              "(a tie counts)",
        )
        for fmt in self.config.formats:
            figures = self.evaluation.get(fmt, {}).get("mediapipe")
            if figures is None:
                summary[fmt] = {"ran": False, "reason": self.docs.get(fmt, {}).get("tflite_metadata")}
            elif figures["ran"]:
                summary[fmt] = {"ran": True, "agreement": figures.get("top1_agreement",
                                                                      figures.get("pixel_agreement"))}
            else:
                summary[fmt] = {"ran": False, "reason": figures["reason"], "hint": figures["hint"]}
        return summary


def mediapipe_lines(summary):
    """Report lines: MediaPipe's agreement with LiteRT per file, or why it did not run."""
    if not summary:
        return []
    if not summary["written"]:
        return [f"TFLite Metadata / MediaPipe: {summary['reason']}"]
    unit = "per-pixel" if summary["api"] == "ImageSegmenter" else "top-1"
    lines = [f"MediaPipe {summary['mediapipe_version']} {summary['api']} vs LiteRT ({unit} agreement, "
             f"{summary['images']} images; TFLite Metadata in every file):"]
    for fmt, figures in summary.items():
        if isinstance(figures, dict) and "ran" in figures:
            lines.append(f"  {fmt}: " + (f"{100 * figures['agreement']:.2f}%" if figures["ran"] else
                                         f"not run: {figures.get('hint') or figures['reason']}"))
    return lines
