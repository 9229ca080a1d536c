"""What a training run is built from, in plain Python (no torch), so a training spec validates
before anything heavy loads: each defense's settings (the objectives themselves are in
:mod:`core.training.defenses`) and each model's architecture arguments."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from core.checks import build_registered, check_choice, check_positive, check_range
from core.paths import InputError


@dataclass
class DefenseSettings:
    """Base of defense hyperparameters: label smoothing, epsilon and its ramp."""

    name: ClassVar[str] = "none"
    paper: ClassVar[str] = ""
    label_smoothing: float = 0.0
    eps: float = 0.0
    eps_ramp_epochs: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.eps, (int, float)) or not 0 <= self.eps <= 1:
            raise InputError(f"defense eps must be in [0, 1] (pixel units), got {self.eps}")
        if not isinstance(self.eps_ramp_epochs, int) or self.eps_ramp_epochs < 0:
            raise InputError(f"eps ramp epochs must be a whole number >= 0, got "
                             f"{self.eps_ramp_epochs!r}")
        self.current_eps = self.eps
        self.validate()

    def validate(self) -> None:
        """Raise InputError for invalid parameters."""

    def params(self) -> dict:
        """Parameters as a JSON-able dict."""
        return asdict(self)

    def attack_steps(self) -> int:
        """Attack gradient steps per training step (for cost estimates)."""
        return 0

    def training_passes(self) -> int:
        """Images trained on per training image (clean and adversarial: 2; for estimates)."""
        return 1

    def crafts_in_train_mode(self) -> bool:
        """Whether crafting runs the model in train mode (a full pass per step; estimates)."""
        return getattr(self, "craft_mode", "eval") == "train"


@dataclass
class SingleStepSettings(DefenseSettings):
    """Base of single-step defenses (one gradient step to craft each example)."""

    eps: float = 0.1

    def attack_steps(self) -> int:
        return 1

    def crafts_in_train_mode(self) -> bool:
        return True  # core.training.defenses.single_step


# Catastrophic overfitting, one definition for the guard's warning, the study and the README: a
# fall of more than 5 pp below the best held-out robust accuracy seen so far.
COLLAPSE_DROP = 0.05
BATCHNORM_CHOICES = ("shared", "separate")
CRAFT_MODES = ("eval", "train")


@dataclass
class FGSMTrainingSettings(SingleStepSettings):
    """FGSM-AT: loss = (1 - weight) CE(clean) + weight CE(FGSM). ``batchnorm``: ``shared``
    (clean and adversarial in one forward, so one set of batch statistics) or ``separate``
    (two forwards, as reference implementations do). ``random_start``: the step (of
    ``alpha_ratio`` * eps) starts from uniform noise of ``noise_ratio`` * eps (R+FGSM);
    ``project``: clip the perturbation to the eps-ball (false with noise 2: N-FGSM)."""

    name: ClassVar[str] = "fgsm-at"
    weight: float = 0.5
    # The seed's FGSM-AT (zero start, step eps, one shared forward) collapses on MNIST at eps
    # 0.2 and never becomes robust at 0.3; a random start with separate forwards did neither in
    # the held-out ablation of benchmarks/RESULTS.md, so it is the default.
    batchnorm: str = "separate"
    random_start: bool = True
    alpha_ratio: float = 1.25
    noise_ratio: float = 1.0
    project: bool = True

    def training_passes(self) -> int:
        return 1 if self.weight == 1 else 2  # the adversarial batch, and the clean one

    def validate(self) -> None:
        if not 0 <= self.weight <= 1:
            raise InputError(f"fgsm-at weight must be in [0, 1], got {self.weight}")
        check_choice("fgsm-at batchnorm", self.batchnorm, BATCHNORM_CHOICES)
        if not isinstance(self.random_start, bool):
            raise InputError(f"fgsm-at random_start must be true or false, got "
                             f"{self.random_start!r}")
        check_range("fgsm-at alpha ratio", self.alpha_ratio, 0.0, 10.0)
        check_range("fgsm-at noise ratio", self.noise_ratio, 0.0, 10.0)
        if not isinstance(self.project, bool):
            raise InputError(f"fgsm-at project must be true or false, got {self.project!r}")


@dataclass
class FastATSettings(SingleStepSettings):
    """fast-AT: FGSM from a random start with step ``alpha_ratio`` * eps."""

    name: ClassVar[str] = "fast-at"
    alpha_ratio: float = 1.25

    def validate(self) -> None:
        check_range("fast-at alpha ratio", self.alpha_ratio, 0.0, 10.0)


@dataclass
class MultiStepSettings(DefenseSettings):
    """Shared budget of PGD-based defenses. ``craft_mode``: ``eval`` (BatchNorm normalizes
    by its running statistics while crafting) or ``train`` (by the batch's own statistics, the
    running ones left untouched)."""

    eps: float = 0.1
    steps: int = 10
    step_size: float | None = None
    craft_mode: str = "eval"

    def validate(self) -> None:
        check_choice("defense craft_mode", self.craft_mode, CRAFT_MODES)
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps <= 0:
            raise InputError(f"defense steps must be a positive whole number, got {self.steps!r}")
        if self.step_size is not None and self.step_size <= 0:
            raise InputError(f"defense step size must be positive, got {self.step_size}")

    def attack_steps(self) -> int:
        return self.steps


@dataclass
class PGDTrainingSettings(MultiStepSettings):
    """PGD-AT: cross-entropy on PGD examples."""

    name: ClassVar[str] = "pgd-at"


@dataclass
class TRADESSettings(MultiStepSettings):
    """TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy"): CE(clean) + beta KL(clean || adversarial). As in its reference code
    (``trades.py``: the example crafted with the model in eval mode, then ``model(x_natural)``
    and ``model(x_adv)`` as two train-mode forwards), ``batchnorm`` is ``separate`` by default;
    ``shared`` runs both batches in one forward (RobustLab's default before 2026-12-07)."""

    name: ClassVar[str] = "trades"
    beta: float = 6.0
    batchnorm: str = "separate"

    def validate(self) -> None:
        super().validate()
        if self.beta < 0:
            raise InputError(f"trades beta must be >= 0, got {self.beta}")
        check_choice("trades batchnorm", self.batchnorm, BATCHNORM_CHOICES)

    def training_passes(self) -> int:
        return 2  # the clean and the adversarial batch


@dataclass
class IATSettings(MultiStepSettings):
    """IAT (Lamb et al. 2019, "Interpolated Adversarial Training"): mixup on the clean and on
    the adversarial batch. ``loss_factor`` multiplies the sum of their two losses, and so acts
    as a learning-rate multiplier: 0.5 (their mean, as the paper's text) steps as the sum would
    at half the learning rate; 1 is Algorithm 1's sum. ``batchnorm``: the two mixed batches in
    two forwards (``separate``) or one (``shared``: one set of batch statistics);
    ``recalibrate``: BatchNorm's running statistics recomputed on clean training images at the
    end of every epoch (issue 23's ablations). ``craft_mode`` is ``train`` by default: crafting
    with the batch's own statistics beat crafting with the running ones in every audited run
    that compared them (+14.8 pp at MNIST L-inf 0.3, +3.4 pp at 0.2) and did not collapse where
    ``eval`` did (benchmarks/RESULTS.md, issue 37)."""

    name: ClassVar[str] = "iat"
    alpha: float = 0.2  # mixup's Beta(alpha, alpha); 0.2 beat 1.0 on held-out images (RESULTS.md)
    craft_mode: str = "train"
    lam: float | None = None
    loss_factor: float = 0.5
    batchnorm: str = "separate"
    recalibrate: bool = False

    def validate(self) -> None:
        super().validate()
        check_range("iat loss_factor", self.loss_factor, 0.0, 10.0)
        check_choice("iat batchnorm", self.batchnorm, BATCHNORM_CHOICES)
        if not isinstance(self.recalibrate, bool):
            raise InputError(f"iat recalibrate must be true or false, got {self.recalibrate!r}")
        if self.alpha <= 0:
            raise InputError(f"iat alpha must be > 0, got {self.alpha}")
        if self.lam is not None and not 0 <= self.lam <= 1:
            raise InputError(f"iat lam must be in [0, 1], got {self.lam}")

    def training_passes(self) -> int:
        return 2  # the clean and the adversarial batch


DEFENSE_SETTINGS: dict[str, type[DefenseSettings]] = {
    cls.name: cls for cls in (DefenseSettings, FGSMTrainingSettings, FastATSettings,
                              PGDTrainingSettings, TRADESSettings, IATSettings)}


def defense_settings(name: str, **params) -> DefenseSettings:
    """Validated hyperparameters of defense ``name``."""
    return build_registered("defense", DEFENSE_SETTINGS, name, params)


MODEL_ARGS: dict[str, dict[str, int]] = {
    "seed-resnet": {"width": 16, "blocks": 3},
    "resnet20": {"depth": 20},
    "preact-resnet18": {},
}


def check_model(name: str, args: dict) -> None:
    """Raise InputError for an unknown model or bad architecture arguments."""
    if name not in MODEL_ARGS:
        raise InputError(f"unknown model {name!r}; valid models: {', '.join(MODEL_ARGS)}")
    unknown = sorted(set(args) - set(MODEL_ARGS[name]))
    if unknown:
        raise InputError(f"unknown argument(s) {unknown} for model {name!r}; valid: "
                         f"{', '.join(MODEL_ARGS[name]) or 'none'}")
    for key, value in args.items():
        check_positive(f"{name} {key}", value)
    depth = args.get("depth", 20)
    if name == "resnet20" and (depth - 2) % 6:
        raise InputError(f"resnet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
