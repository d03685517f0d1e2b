"""Where a training run starts: a new model, or the serving champion's weights (fine-tuning).

Fine-tuning is only sound when the champion predicts the same classes in the
same order; the stage (`ml.stages.train.champion_start`) checks that and hands the
champion over, or says why not; without one the run trains from scratch and its
MLflow params say why.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ml.hparams import INITS, HParams, finetune

log = logging.getLogger(__name__)


def initial_model(hp: HParams, classes: list[str], x_train: np.ndarray,
                  champion: tuple[Any, dict[str, str]] | None = None) -> tuple[Any, HParams, dict[str, str]]:
    """The model to fit, the hyperparameters to fit it with, and what was used (MLflow params).

    champion: (the champion's Keras model or None, info) when hp.init is "champion".
    """
    from ml.model import build_model, init_dirac, init_whitening

    if hp.init not in INITS:
        raise ValueError(f"init={hp.init!r}: choose one of {', '.join(INITS)}")
    info = {"init_used": "scratch"}
    if hp.init == "champion":
        model, info = champion or (None, {"init_used": "scratch", "init_reason": "no champion given"})
        info = dict(info)
        if model is not None:
            if "stem" in [layer.name for layer in model.layers]:
                model.get_layer("stem").trainable = False  # as in training from scratch
            return model, finetune(hp).with_(arch=info.pop("arch") or hp.arch), info
        # Every first run and every planned scratch retraining lands here: normal, so not a warning.
        log.info("init=champion: %s; training from scratch", info["init_reason"])
    model = build_model(hp.arch, len(classes), width=hp.width, activation=hp.activation, bn_momentum=hp.bn_momentum)
    if hp.whiten and hp.arch == "airnet":
        init_whitening(model, x_train)
        model.get_layer("stem").trainable = False  # airbench keeps the whitening filters fixed
        init_dirac(model)
    return model, hp, {**info, "finetune_generation": "0"}
