"""Training hyperparameters: one dataclass and the named profiles `smoke`, `standard`, `full`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

DEFAULT_ARCH = "airnet"


@dataclass(frozen=True)
class HParams:
    """Everything that shapes a training run; logged as MLflow params."""

    arch: str = DEFAULT_ARCH
    epochs: int = 12
    batch_size: int = 512
    # Peak LR of the one-cycle schedule (linear warm-up, cosine decay to 0), per the Myrtle
    # ResNet-9 recipe; mean-reduced loss, so it does not scale with the batch size.
    learning_rate: float = 0.4
    warmup_fraction: float = 0.25
    optimizer: str = "sgd"  # sgd = Nesterov momentum; adam for seed_cnn's reference recipe
    momentum: float = 0.9
    weight_decay: float = 5e-4  # not applied to BN parameters and biases
    label_smoothing: float = 0.2
    width: int = 64  # airnet: widths are (width, 4*width, 4*width) as in airbench94
    activation: str = "gelu"  # airnet only
    whiten: bool = True  # airnet only: patch-whitening init of the 2x2 stem from training images
    crop_pad: int = 2  # random translation of up to crop_pad pixels (reflect padding)
    flip: bool = True
    ema: bool = False  # EMA of weights (Keras optimizer use_ema); off: BN stats are not averaged
    early_stopping_patience: int = 4  # epochs without val_accuracy gain
    # Wall-clock budget, 0 = none: the one-cycle schedule runs on max(step, time) progress, so a
    # slow machine finishes a full (shorter) schedule inside the budget instead of being cut off.
    max_minutes: float = 0.0
    max_train_images: int = 0  # use only the first N training images, 0 = all
    seed: int = 1337

    def to_params(self) -> dict[str, object]:
        return asdict(self)

    def with_(self, **changes) -> HParams:
        return replace(self, **changes)


# seed_cnn's own recipe: the reference design trains with Adam at its default LR.
SEED_CNN = dict(optimizer="adam", learning_rate=1e-3, warmup_fraction=0.0, weight_decay=0.0,
                label_smoothing=0.0, batch_size=128, crop_pad=4)

PROFILES: dict[str, HParams] = {
    # Seconds on the tiny test snapshot: proves the plumbing, not the model.
    "smoke": HParams(epochs=3, batch_size=32, width=8, learning_rate=0.05, warmup_fraction=0.2,
                     early_stopping_patience=3, label_smoothing=0.0),
    # Default: up to 16 epochs of the 13-class set, at most 20 minutes of training on any machine.
    "standard": HParams(epochs=16, max_minutes=20.0),
    # Longer schedule, no time budget, for a machine with time to spare.
    "full": HParams(epochs=30, early_stopping_patience=8),
}


def get_profile(profile: str, arch: str | None = None) -> HParams:
    """Named profile, with arch-specific defaults when a different arch is asked for."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    hp = PROFILES[profile]
    if arch and arch != hp.arch:
        hp = hp.with_(arch=arch)
    if hp.arch == "seed_cnn" and profile != "smoke":
        hp = hp.with_(**SEED_CNN)
    return hp
