"""`MBAKTConfig`: every choice of the MBAKT training objective in one dataclass."""

import dataclasses
from typing import Optional, Tuple

MODES = ("plain", "byot", "mbakt")
TEACHERS = ("ensemble", "main")
ADAPTATIONS = ("auto", "conv", "separable")
ADVERSARIAL_INPUTS = ("logits", "probabilities", "features")
BRANCH_DESIGNS = ("exit", "peer", "deep")
ENSEMBLES = ("mean", "gated", "gated_detached")
DISCRIMINATOR_CONDITIONS = ("none", "label")


def config_field(default, help, choices=None):  # noqa: A002 - `help` as in absl's DEFINE_*
    """A dataclass field with the help text and choices its command-line flag shows.

    The scripts derive their flags from these (`mbakt_tf.cli.config_flags`),
    so a default or a choice is written once, here. (The Args sections of the
    docstrings say more; `help` is the one-line flag text.)

    Example:
    >>> @dataclasses.dataclass
    ... class Config:
    ...     mode: str = config_field("a", "Which mode.", ("a", "b"))
    >>> field = dataclasses.fields(Config)[0]
    >>> field.default, field.metadata["help"], field.metadata["choices"]
    ('a', 'Which mode.', ('a', 'b'))
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class MBAKTConfig:
    """What the MBAKT training step optimises.

    The generator loss is
    `sum_k [(1 - alpha(t)) * ce_k + alpha(t) * kd_k] + beta * sum_k hint_k
    + gamma(t) * sum_k adv_k` (+ the cross-entropy of the gated ensemble's
    logits with `ensemble="gated"`), with `alpha(t)` and `gamma(t)` ramped
    linearly from 0 over `distillation_warmup_steps` and
    `adversarial_warmup_steps`. With `teacher="main"` (BYOT) the main branch
    is the teacher and keeps its full cross-entropy; the sums of kd then run
    over the auxiliary branches only.

    The defaults are the design measured best on Fashion-MNIST (docs/results.md, "Does
    it work?", chosen on the validation split): two peers, a gated teacher
    whose gate starts on the main branch, hints, a label-conditioned
    discriminator on logits, and no KL term (`alpha=0`: with 1,000 training
    images it cost 0.4 points on validation; set `alpha=0.5` for it).

    Args:
        mode: `"plain"` (main branch only, cross-entropy), `"byot"` (branches,
            cross-entropy, distillation from the deepest classifier and feature
            hints, no adversary) or `"mbakt"` (branches, ensemble teacher, all
            four losses).
        alpha: weight of the distillation term against cross-entropy, in [0, 1].
        beta: weight of the feature-hint term, >= 0.
        gamma: final weight of the adversarial term, >= 0.
        temperature: distillation temperature, > 0.
        adversarial_temperature: temperature of the probabilities the
            discriminator sees, > 0.
        adversarial_warmup_steps: optimizer steps over which gamma ramps up.
        discriminator_steps: discriminator updates per generator update.
        discriminator_label_smoothing: target for "real" is `1 - this`.
        discriminator_units: hidden layer widths of the discriminator MLP.
        adversarial_input: what the discriminator sees, `"logits"` (at
            temperature 1), `"probabilities"` (softened by
            `adversarial_temperature`) or `"features"` (pooled features).
        teacher: `"ensemble"` (all branches, see `ensemble`) or `"main"` (the
            deepest classifier, as in BYOT). `None` picks `"main"` for byot
            and `"ensemble"` for mbakt.
        branch_stages: indices (1 = shallowest) of the backbone stages that get
            an auxiliary branch; `None` takes the deepest three stages before
            the last.
        adaptation: adaptation block kind, `"conv"` (strided conv-BN-ReLU),
            `"separable"` (depthwise-separable) or `"auto"` (separable for
            mobile backbones).
        branch_design: `"exit"` (adaptation block and head on an earlier
            stage), `"peer"` (ONE: copies of the last `peer_stages` stages on
            the shared trunk) or `"deep"` (the branch on stage s copies every
            stage after s). See `branches`. `None`: `"peer"` (for segmentation,
            peer decoders).
        peer_stages: how many of the backbone's last stages a peer copies.
        num_peers: number of peers with `branch_design="peer"`.
        ensemble: the ensemble teacher, `"mean"` of all branch logits or
            `"gated"` (ONE: softmax weights over branches from the shared
            trunk's pooled features, trained by a cross-entropy on the gated
            logits, which also reach every branch, as in ONE), or
            `"gated_detached"` (the same gate, but its cross-entropy sees
            stop-gradient branch logits: only the gate learns from it, so the
            branch the gate favours gets no extra supervision). With
            `teacher="main"` there is no gate: the ensemble metric is then
            the mean.
        gate_main_weight: the main branch's weight in the gate at the start
            (e.g. 0.8), the other branches sharing the rest; `None` starts
            uniform. ONE's gate settles on one branch (weight > 0.9), which
            then also gets most of the gated cross-entropy's supervision and
            ends up the best head: starting the gate on the main branch makes
            that the branch that ships.
        distillation_warmup_steps: optimizer steps over which alpha ramps
            linearly from 0 (0: full alpha from the first step).
        discriminator_condition: `"label"` concatenates the one-hot label to
            what the discriminator sees (a conditional GAN), `"none"` does not.
        max_adversarial_grad_ratio: the adversarial gradient never exceeds
            this fraction of the cross-entropy's, both measured at the
            network's outputs: when `gamma(t) * adv` would push harder, it is
            scaled down for that step (logged as `adv_scale` < 1). The
            cross-entropy's gradient shrinks as a network fits its data while
            the adversary's does not, so without a cap the adversary ends up
            steering the network, away from the labels (it erased every
            object of a keras-cv segmenter, docs/segmentation.md). `None`:
            no cap.

    Example:
    >>> config = MBAKTConfig(mode="mbakt", alpha=0.5, gamma=0.1)
    >>> MBAKTConfig.from_dict(config.to_dict()) == config
    True
    """

    mode: str = config_field(
        "mbakt", "plain: main branch only; byot: self-distillation; mbakt: all four losses.", MODES)
    alpha: float = config_field(0.0, "Weight of distillation against cross-entropy, in [0, 1].")
    beta: float = config_field(0.05, "Weight of the feature-hint loss.")
    gamma: float = config_field(0.1, "Final weight of the adversarial loss.")
    temperature: float = config_field(3.0, "Distillation temperature.")
    adversarial_temperature: float = config_field(
        1.0, "Temperature of the probabilities the discriminator sees.")
    adversarial_warmup_steps: int = config_field(
        500, "Steps over which the adversarial weight ramps up from 0.")
    discriminator_steps: int = config_field(1, "Discriminator updates per generator update.")
    discriminator_label_smoothing: float = config_field(0.1, "Real label of the discriminator is 1 - this.")
    discriminator_units: Tuple[int, ...] = config_field((64, 64), "Hidden widths of the discriminator MLP.")
    adversarial_input: str = config_field("logits", "What the discriminator sees.", ADVERSARIAL_INPUTS)
    teacher: Optional[str] = config_field(
        None, "Distillation teacher (default: main for byot, ensemble for mbakt).", TEACHERS)
    branch_stages: Optional[Tuple[int, ...]] = config_field(
        None, "Stage indices (1 = shallowest) with a branch; default: deepest 3 before the last.")
    adaptation: str = config_field("auto", "Adaptation block kind.", ADAPTATIONS)
    branch_design: Optional[str] = config_field(
        None,
        "exit: adaptation block + head on earlier stages; peer: copies of the last --peer_stages "
        "stages on the shared trunk (ONE); deep: each branch copies every stage after its own "
        "(default: peer; for segmentation peer decoders).",
        BRANCH_DESIGNS,
    )
    peer_stages: int = config_field(1, "How many of the last stages a peer copies.")
    num_peers: int = config_field(2, "Number of peers (--branch_design=peer).")
    ensemble: str = config_field(
        "gated",
        "Ensemble teacher: mean of the branch logits, gated (ONE's learned softmax over branches, whose "
        "cross-entropy also trains the branches) or gated_detached (the gate alone learns from it).",
        ENSEMBLES,
    )
    gate_main_weight: Optional[float] = config_field(
        0.8, "The main branch's weight in the gate at the start; 0: Keras's initialisation (about "
        "uniform, as in ONE).")
    distillation_warmup_steps: int = config_field(
        500, "Steps over which the distillation weight alpha ramps up from 0.")
    discriminator_condition: str = config_field(
        "label", "label: the discriminator also sees the one-hot label (conditional GAN).",
        DISCRIMINATOR_CONDITIONS)
    max_adversarial_grad_ratio: Optional[float] = config_field(
        0.1, "The adversarial gradient never exceeds this fraction of the cross-entropy's (at the "
        "network's outputs); 0: no cap.")

    def __post_init__(self):
        self.discriminator_units = tuple(int(u) for u in self.discriminator_units)
        if self.branch_stages is not None:
            self.branch_stages = tuple(int(s) for s in self.branch_stages)
        self.validate()

    def validate(self):
        """Raises `ValueError` naming the first field that makes no sense."""
        _check_choice("mode", self.mode, MODES)
        _check_choice("adaptation", self.adaptation, ADAPTATIONS)
        _check_choice("adversarial_input", self.adversarial_input, ADVERSARIAL_INPUTS)
        if self.branch_design is not None:
            _check_choice("branch_design", self.branch_design, BRANCH_DESIGNS)
        _check_choice("ensemble", self.ensemble, ENSEMBLES)
        _check_choice("discriminator_condition", self.discriminator_condition, DISCRIMINATOR_CONDITIONS)
        if self.gate_main_weight is not None and not 0.0 < self.gate_main_weight < 1.0:
            raise ValueError(
                f"MBAKTConfig.gate_main_weight must be in (0, 1) or None, got {self.gate_main_weight}."
            )
        if self.max_adversarial_grad_ratio is not None and not self.max_adversarial_grad_ratio > 0:
            raise ValueError(
                "MBAKTConfig.max_adversarial_grad_ratio must be > 0 or None, got "
                f"{self.max_adversarial_grad_ratio}."
            )
        for name in ("peer_stages", "num_peers"):
            if getattr(self, name) < 1:
                raise ValueError(f"MBAKTConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.teacher is not None:
            _check_choice("teacher", self.teacher, TEACHERS)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"MBAKTConfig.alpha must be in [0, 1], got {self.alpha}.")
        for name in ("beta", "gamma", "discriminator_label_smoothing"):
            if getattr(self, name) < 0:
                raise ValueError(f"MBAKTConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.discriminator_label_smoothing >= 0.5:
            raise ValueError(
                "MBAKTConfig.discriminator_label_smoothing must be < 0.5, got "
                f"{self.discriminator_label_smoothing}."
            )
        for name in ("temperature", "adversarial_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MBAKTConfig.{name} must be > 0, got {getattr(self, name)}.")
        for name in ("adversarial_warmup_steps", "distillation_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"MBAKTConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.discriminator_steps < 1:
            raise ValueError(
                f"MBAKTConfig.discriminator_steps must be >= 1, got {self.discriminator_steps}."
            )
        if not self.discriminator_units or min(self.discriminator_units) < 1:
            raise ValueError(
                "MBAKTConfig.discriminator_units must be positive widths, got "
                f"{self.discriminator_units}."
            )
        if self.branch_stages is not None and (
            not self.branch_stages or min(self.branch_stages) < 1
        ):
            raise ValueError(
                "MBAKTConfig.branch_stages must be stage indices >= 1 (1 = shallowest), "
                f"got {self.branch_stages}."
            )

    @property
    def uses_branches(self):
        return self.mode != "plain"

    @property
    def uses_adversary(self):
        return self.mode == "mbakt" and self.gamma > 0

    def resolved_branch_design(self, task="classification"):
        if self.branch_design is not None:
            return self.branch_design
        # Segmentation too: exit heads on a keras-cv CSPDarkNet's coarse decoder steps cost 0.045 test mIoU
        # against plain where peer decoders gained 0.005 (docs/no_harm.md), and validation chose peer
        # on Fashion-MNIST (flags/compare_fashion_mnist_segmentation.cfg).
        return "peer"

    @property
    def uses_gate(self):
        """True when a learned gate forms the ensemble teacher (not with `teacher="main"`)."""
        return (
            self.uses_branches
            and self.ensemble in ("gated", "gated_detached")
            and self.resolved_teacher == "ensemble"
        )

    @property
    def resolved_teacher(self):
        if self.teacher is not None:
            return self.teacher
        return "main" if self.mode == "byot" else "ensemble"

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["discriminator_units"] = list(self.discriminator_units)
        if self.branch_stages is not None:
            values["branch_stages"] = list(self.branch_stages)
        return values

    @classmethod
    def from_dict(cls, values):
        return dataclass_from_dict(cls, values)


def dataclass_from_dict(cls, values):
    """`cls(**values)` for a dataclass, with unknown keys an error that names them."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} fields: {unknown}. Known: {sorted(known)}.")
    return cls(**values)


def _check_choice(field, value, choices):
    if value not in choices:
        raise ValueError(f"MBAKTConfig.{field} must be one of {choices}, got {value!r}.")
