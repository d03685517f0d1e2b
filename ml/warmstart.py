"""Where a training run starts: a new model, or the serving champion's weights (fine-tuning).

Fine-tuning is only sound when the champion predicts the same classes in the
same order; otherwise (or with no champion yet) the run trains from scratch
and says why in its MLflow params.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ml.config import Settings
from ml.hparams import INITS, HParams, finetune

log = logging.getLogger(__name__)


def champion_start(settings: Settings, classes: list[str]) -> tuple[Any, dict[str, str]]:
    """(the champion's Keras model, info) when its class list equals `classes`, else (None, reason)."""
    import mlflow

    from ml.model import load_model_version
    from ml.registry import champion_version

    version = champion_version(settings)
    if version is None:
        return None, {"init_used": "scratch", "init_reason": "no champion yet"}
    run_id = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_model_version(settings.model_name, version).run_id
    info = mlflow.artifacts.load_dict(f"runs:/{run_id}/bundle/bundle.json")
    if list(info.get("classes", [])) != list(classes):
        return None, {"init_used": "scratch", "init_reason": f"champion v{version} has other classes"}
    model = load_model_version(settings.model_name, version)
    return model, {"init_used": "champion", "init_version": str(version), "init_run_id": run_id,
                   "arch": str(info.get("arch", ""))}


def initial_model(settings: Settings, hp: HParams, classes: list[str], x_train: np.ndarray) -> tuple[Any, HParams,
                                                                                                   dict[str, str]]:
    """The model to fit, the hyperparameters to fit it with, and what was used (MLflow params)."""
    from ml.model import build_model, init_dirac, init_whitening

    if hp.init not in INITS:
        raise ValueError(f"init={hp.init!r}: choose one of {', '.join(INITS)}")
    info = {"init_used": "scratch"}
    if hp.init == "champion":
        model, info = champion_start(settings, classes)
        if model is not None:
            if "stem" in [layer.name for layer in model.layers]:
                model.get_layer("stem").trainable = False  # as in training from scratch
            return model, finetune(hp).with_(arch=info.pop("arch") or hp.arch), info
        log.warning("init=champion: %s; training from scratch", info["init_reason"])
    model = build_model(hp.arch, len(classes), width=hp.width, activation=hp.activation, bn_momentum=hp.bn_momentum)
    if hp.whiten and hp.arch == "airnet":
        init_whitening(model, x_train)
        model.get_layer("stem").trainable = False  # airbench keeps the whitening filters fixed
        init_dirac(model)
    return model, hp, info
