"""Training mechanics a user relies on: the one-cycle schedule and the time budget."""

from __future__ import annotations

import time

import pytest

from ml.optim import OneCycle


def test_one_cycle_warms_up_peaks_and_anneals_to_zero():
    schedule = OneCycle(peak=0.4, warmup=0.25, total_steps=100)
    rates = [schedule.rate(p / 100) for p in range(101)]
    assert rates[0] == 0 and rates[25] == pytest.approx(0.4) and rates[100] == pytest.approx(0, abs=1e-9)
    assert all(a <= b for a, b in zip(rates[:25], rates[1:26], strict=False))  # rises during warm-up
    assert all(a >= b for a, b in zip(rates[25:], rates[26:], strict=False))  # then only falls


def test_time_budget_drives_progress_when_the_machine_is_slow():
    schedule = OneCycle(peak=0.4, warmup=0.25, total_steps=10_000, max_minutes=0.5)
    schedule.start = time.monotonic() - 15  # half the 30 s budget used after only 10 steps
    schedule.step = 10
    assert schedule.progress() == pytest.approx(0.5, abs=0.01)
    schedule.start = time.monotonic() - 31
    assert schedule.progress() == 1.0  # the schedule has reached 0: training stops here


def test_without_budget_progress_is_steps():
    schedule = OneCycle(peak=0.4, warmup=0.25, total_steps=200)
    schedule.step = 50
    assert schedule.progress() == pytest.approx(0.25)


def test_one_cycle_starts_and_ends_at_the_configured_fractions_of_the_peak():
    schedule = OneCycle(peak=1.5, warmup=0.23, total_steps=100, start=0.2, end=0.07)
    assert schedule.rate(0) == pytest.approx(0.3)
    assert schedule.rate(0.23) == pytest.approx(1.5)
    assert schedule.rate(1.0) == pytest.approx(0.105)


def _tiny_airnet():
    from ml.model import build_model

    return build_model("airnet", 3, width=4)


def test_batchnorm_biases_learn_faster_and_other_weights_do_not():
    import keras
    import numpy as np

    from ml.optim import BiasScaledSGD, is_norm_bias

    moved = {}
    for scale in (1.0, 64.0):
        keras.utils.set_random_seed(0)
        model = _tiny_airnet()
        model.compile(optimizer=BiasScaledSGD(learning_rate=0.01, momentum=0.0, bias_lr_scale=scale),
                      loss="categorical_crossentropy")
        before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
        x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")
        model.train_on_batch(x, np.eye(3)[np.arange(8) % 3])
        moved[scale] = [(is_norm_bias(v), np.abs(keras.ops.convert_to_numpy(v) - b).sum())
                        for v, b in zip(model.trainable_variables, before, strict=True)]
    for (bias, slow), (_, fast) in zip(moved[1.0], moved[64.0], strict=True):
        assert fast == pytest.approx(64 * slow if bias else slow, rel=1e-3)
    assert any(bias and slow > 0 for bias, slow in moved[1.0])


def test_lookahead_ends_training_on_the_averaged_weights_unless_early_stopping_restored_others():
    import keras
    import numpy as np

    from ml.optim import Lookahead

    model = _tiny_airnet()
    kernel = model.get_layer("logits").kernel
    start = keras.ops.convert_to_numpy(kernel).copy()
    schedule = OneCycle(peak=0.1, warmup=0.2, total_steps=10)
    schedule.step = 10  # late in training: the EMA decay is at its peak
    lookahead = Lookahead(schedule, every=1)
    lookahead.set_model(model)
    lookahead.on_train_begin()
    kernel.assign(start + 1.0)  # the fast weights move by 1
    lookahead.on_train_batch_end(0)
    averaged = keras.ops.convert_to_numpy(kernel)
    np.testing.assert_allclose(averaged, start + (1 - 0.95 ** 5), rtol=1e-5)  # pulled back towards the slow
    kernel.assign(start + 5.0)
    lookahead.on_train_end()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), averaged, rtol=1e-5)

    stopping = keras.callbacks.EarlyStopping()
    stopping.stopped_epoch = 3
    kept = Lookahead(schedule, stopping)
    kept.set_model(model)
    kept.on_train_begin()
    kernel.assign(start)
    kept.on_train_end()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), start)


def test_each_training_epoch_sees_every_image_once_in_a_new_order():
    import numpy as np

    from ml.hparams import get_profile
    from ml.train import make_dataset

    x = np.broadcast_to(np.arange(50, dtype=np.uint8)[:, None, None, None], (50, 32, 32, 3)).copy()
    y = np.arange(50) % 13  # image i is filled with the value i: augmentation keeps it recognisable
    hp = get_profile("smoke").with_(batch_size=16)
    ds = make_dataset(x, y, 13, hp, train=True)
    for _ in range(2):
        batches = list(ds)
        seen = np.concatenate([images.numpy()[:, 0, 0, 0] for images, _ in batches]).astype(int)
        labels = np.concatenate([onehot.numpy().argmax(1) for _, onehot in batches])
        assert sorted(seen.tolist()) == list(range(50)) and np.array_equal(labels, y[seen])
        assert not np.array_equal(seen, np.arange(50))  # shuffled


def test_early_stopping_waits_for_the_learning_rate_to_come_down():
    """A 30-epoch run whose validation accuracy swings at the peak rate is not stopped there."""
    from ml.hparams import get_profile
    from ml.train import early_stopping

    hp = get_profile("full", "airnet")
    stopping = early_stopping(hp)
    stopping.set_model(_tiny_airnet())
    stopping.on_train_begin()
    swings = [0.54, 0.68, 0.59, 0.34, 0.21, 0.50, 0.33, 0.51, 0.45, 0.40, 0.52, 0.55, 0.60, 0.62, 0.66]
    for epoch, accuracy in enumerate(swings):
        stopping.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert not getattr(stopping.model, "stop_training", False) and stopping.stopped_epoch == 0
    for epoch in range(len(swings), hp.epochs):  # late in the schedule a plateau does stop it
        stopping.on_epoch_end(epoch, {"val_accuracy": 0.80 if epoch == len(swings) + 3 else 0.70})
        if getattr(stopping.model, "stop_training", False):
            break
    assert stopping.stopped_epoch == len(swings) + 3 + hp.early_stopping_patience


def test_corrected_images_are_seen_feedback_weight_times_per_epoch():
    """40 CIFAR images and 10 corrections: weight 3 lifts the corrections from 20 % to 43 % of an epoch."""
    import numpy as np

    from ml.hparams import get_profile
    from ml.train import feedback_mask, feedback_repeats, make_dataset

    x = np.broadcast_to(np.arange(50, dtype=np.uint8)[:, None, None, None], (50, 32, 32, 3)).copy()
    y = np.arange(50) % 13
    manifest = {"sources": [{"kind": "cifar10", "name": "cifar10"}, {"kind": "feedback", "name": "feedback"}]}
    source = np.where(np.arange(50) >= 40, 1, 0).astype(np.int16)
    mask = feedback_mask(manifest, source)
    assert mask.sum() == 10 and mask[40:].all()
    hp = get_profile("smoke").with_(batch_size=16)
    for weight, share in ((1, 10 / 50), (3, 30 / 70)):
        ds = make_dataset(x, y, 13, hp, train=True, repeats=feedback_repeats(mask, weight))
        seen = np.concatenate([images.numpy()[:, 0, 0, 0] for images, _ in ds]).astype(int)
        counts = np.bincount(seen, minlength=50)
        assert (counts[:40] == 1).all() and (counts[40:] == weight).all()  # every image, corrections weight times
        assert np.mean(seen >= 40) == pytest.approx(share)


def test_a_source_index_outside_the_manifest_is_not_feedback():
    import numpy as np

    from ml.train import feedback_mask

    manifest = {"sources": [{"kind": "feedback"}]}
    assert feedback_mask(manifest, np.array([0, 1, -1, 7], np.int16)).tolist() == [True, False, False, False]
    assert not feedback_mask({}, np.zeros(3, np.int16)).any()  # an old manifest without sources
