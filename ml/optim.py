"""Optimisation pieces of the training recipe: LR schedule, bias-scaled SGD, lookahead.

They follow airbench94 (Keller Jordan's CIFAR-10 speed record), whose ablation
measured what each buys per FLOP: 64x learning rate on BatchNorm biases cut the
epochs to 94 % by a quarter, lookahead (with fast BatchNorm momentum) by another
tenth. Here they let the default model reach its accuracy in the minutes a
2-core CPU gives it.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

log = logging.getLogger(__name__)


class OneCycle(keras.callbacks.Callback):
    """Piecewise-linear one-cycle LR: start -> peak at `warmup` -> end, over steps or a time budget.

    Progress is max(step / total_steps, elapsed / budget), so a slow machine still
    anneals the learning rate fully inside max_minutes instead of being cut off at
    a high rate; training stops when progress reaches 1. Rates are fractions of `peak`.
    """

    def __init__(self, peak: float, warmup: float, total_steps: int, max_minutes: float = 0.0,
                 start: float = 0.0, end: float = 0.0):
        super().__init__()
        self.peak, self.warmup, self.total = peak, warmup, max(1, total_steps)
        self.start_fraction, self.end_fraction = start, end
        self.budget_s = max_minutes * 60
        self.step, self.start = 0, time.monotonic()

    def progress(self) -> float:
        by_time = (time.monotonic() - self.start) / self.budget_s if self.budget_s else 0.0
        return min(1.0, max(self.step / self.total, by_time))

    def rate(self, progress: float) -> float:
        if progress < self.warmup:
            fraction = self.start_fraction + (1 - self.start_fraction) * progress / self.warmup
        else:
            fraction = 1 + (self.end_fraction - 1) * (progress - self.warmup) / (1 - self.warmup)
        return self.peak * fraction

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = time.monotonic()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        progress = self.progress()
        self.model.optimizer.learning_rate.assign(self.rate(progress))
        self.step += 1
        if progress >= 1.0:
            if self.budget_s and self.step < self.total:
                log.warning("time budget of %.1f min used: stopping after %d steps", self.budget_s / 60, self.step)
            self.model.stop_training = True


def is_norm_bias(variable) -> bool:
    """BatchNorm shift parameters (Keras names them beta; the TF backend hands over tf.Variables)."""
    name = getattr(variable, "path", None) or variable.name
    return name.rsplit("/", 1)[-1].split(":")[0] == "beta"


class BiasScaledSGD(keras.optimizers.SGD):
    """Nesterov SGD with L2 decay through the momentum (as PyTorch's SGD) and faster BatchNorm biases.

    Biases learn `bias_lr_scale` times faster (airbench: 64x) with decay divided by
    the same factor, so every parameter decays at `l2 * lr` per step. Only used while
    fitting: train.py recompiles with a stock optimizer before the model is logged,
    so a logged model loads anywhere without this class.
    """

    def __init__(self, bias_lr_scale: float = 1.0, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.bias_lr_scale, self.l2 = bias_lr_scale, l2

    def update_step(self, gradient, variable, learning_rate):
        scale = self.bias_lr_scale if is_norm_bias(variable) else 1.0
        if self.l2:
            gradient = gradient + (self.l2 / scale) * variable
        super().update_step(gradient, variable, learning_rate * scale if scale != 1.0 else learning_rate)


class Lookahead(keras.callbacks.Callback):
    """Every `every` steps the weights move to an EMA of themselves; at the end they become the EMA.

    The EMA's decay grows as peak * progress^3 (airbench94), so early training is
    unaffected and the last part averages out the noise of the fast weights.
    Progress comes from the OneCycle schedule, so a time budget drives it too. When
    early stopping ended the run, its restored best weights are kept instead.
    """

    def __init__(self, schedule: OneCycle, stopping: keras.callbacks.EarlyStopping | None = None,
                 every: int = 5, peak_decay: float = 0.95 ** 5):
        super().__init__()
        self.schedule, self.stopping, self.every, self.peak_decay = schedule, stopping, every, peak_decay
        self.slow: list[np.ndarray] = []
        self.steps = 0

    def _variables(self) -> list:
        # Weights and BatchNorm statistics; not the optimizer's slots, not integer counters.
        return [v for v in self.model.variables if "float" in str(v.dtype)]

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.slow = [keras.ops.convert_to_numpy(v) for v in self._variables()]
        self.steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self._update(self.peak_decay * self.schedule.progress() ** 3)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.stopping is None or not self.stopping.stopped_epoch:
            self._update(1.0)

    def _update(self, decay: float) -> None:
        for i, variable in enumerate(self._variables()):
            fast = keras.ops.convert_to_numpy(variable)
            self.slow[i] = decay * self.slow[i] + (1 - decay) * fast
            variable.assign(self.slow[i])
