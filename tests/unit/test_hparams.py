"""Training profiles: named, complete, and arch-aware."""

from __future__ import annotations

import pytest

from ml.config import PROFILES as CONFIG_PROFILES
from ml.hparams import DEFAULT_ARCH, PROFILES, get_profile, parse_overrides


def test_every_configurable_profile_exists():
    assert set(PROFILES) == set(CONFIG_PROFILES)


def test_standard_is_the_default_arch_and_smoke_is_small():
    assert get_profile("standard").arch == DEFAULT_ARCH
    smoke, standard = get_profile("smoke"), get_profile("standard")
    assert smoke.epochs <= 3 and smoke.width < standard.width and smoke.batch_size < standard.batch_size
    assert get_profile("full").epochs > standard.epochs


def test_seed_cnn_trains_with_its_reference_recipe():
    hp = get_profile("standard", "seed_cnn")
    assert (hp.arch, hp.optimizer, hp.label_smoothing) == ("seed_cnn", "adam", 0.0)
    assert get_profile("smoke", "seed_cnn").arch == "seed_cnn"


def test_params_are_flat_scalars_for_mlflow():
    params = get_profile("standard").to_params()
    assert all(isinstance(v, str | int | float | bool) for v in params.values())
    assert {"arch", "epochs", "learning_rate", "seed"} <= set(params)


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="smoke, standard, full"):
        get_profile("huge")


def test_overrides_are_typed_like_the_defaults_and_unknown_fields_are_named():
    assert parse_overrides(["width=64", "learning_rate=0.5", "lookahead=no", "activation=relu"]) == {
        "width": 64, "learning_rate": 0.5, "lookahead": False, "activation": "relu"}
    with pytest.raises(ValueError, match="FIELD one of arch, epochs"):
        parse_overrides(["widht=64"])
    with pytest.raises(ValueError, match="width needs a value of type int"):
        parse_overrides(["width=wide"])


def test_fine_tuning_runs_a_shorter_schedule_at_a_lower_rate():
    from ml.hparams import finetune

    standard = get_profile("standard")
    tuned = finetune(standard)
    assert tuned.epochs < standard.epochs and tuned.learning_rate < standard.learning_rate
    assert tuned.max_minutes < standard.max_minutes and tuned.warmup_fraction == 0.0
    assert finetune(get_profile("smoke")).epochs >= 2  # still enough epochs for early stopping to see


def test_feedback_weight_and_init_come_from_settings_unless_overridden(settings):
    from ml.stages.train import resolve_hparams

    assert resolve_hparams(settings, "smoke", None, None).init == "champion"
    configured = settings.with_(train_init="scratch", feedback_weight=7)
    hp = resolve_hparams(configured, "smoke", None, None)
    assert (hp.init, hp.feedback_weight) == ("scratch", 7)
    assert resolve_hparams(configured, "smoke", None, {"init": "champion"}).init == "champion"
    assert parse_overrides(["init=champion", "feedback_weight=5"]) == {"init": "champion", "feedback_weight": 5}


def test_outlier_exposure_is_a_typed_switch_and_a_bad_value_is_refused():
    import numpy as np

    from ml.outlier_exposure import active, outlier_batch_size

    assert parse_overrides(["outlier_exposure_weight=0.5", "outlier_batch_ratio=0.5"]) == {
        "outlier_exposure_weight": 0.5, "outlier_batch_ratio": 0.5}
    outliers = np.zeros((3, 32, 32, 3), np.uint8)
    assert not active(get_profile("smoke").with_(outlier_exposure_weight=0.0), outliers)
    on = get_profile("standard").with_(outlier_exposure_weight=0.5, outlier_batch_ratio=0.25)
    assert active(on, outliers) and not active(on, None) and outlier_batch_size(on) == 256
    with pytest.raises(ValueError, match="outlier_exposure_weight >= 0"):
        active(on.with_(outlier_exposure_weight=-1.0), outliers)


def test_an_unknown_init_is_refused_with_the_choices(settings):
    import numpy as np

    from ml.warmstart import initial_model

    hp = get_profile("smoke").with_(init="pretrained")
    with pytest.raises(ValueError, match="scratch, champion"):
        initial_model(hp, list(settings.classes), np.zeros((4, 32, 32, 3), np.uint8))
