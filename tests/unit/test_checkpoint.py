"""What a mid-epoch checkpoint carries across a restart: the gradient scaler, the epoch's
progress per process, and the random generators (docs/training.md)."""

from __future__ import annotations

import random

import torch

from container_train import checkpoint
from container_train.engine import EpochProgress


def _objects():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    return model, optimizer, scheduler


def test_mid_epoch_state_round_trips(tmp_path):
    model, optimizer, scheduler = _objects()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(torch.ones(1))
    scaler.update(new_scale=123.0)  # as after an fp16 overflow: not the initial scale
    torch.manual_seed(5)
    random.seed(5)
    rng = checkpoint.rng_states()
    expected_draws = (torch.rand(3), random.random())
    progress = EpochProgress(steps=3, loss_sum=2.5, correct=7, seen=12, seconds=4.0)
    state = checkpoint.TrainingState(epoch=1, mid_epoch=checkpoint.MidEpoch(2, [progress], [rng]))
    checkpoint.save(tmp_path, state=state, model=model, optimizer=optimizer, scheduler=scheduler,
                    class_names=["a", "b"], hyperparameters={"lr": 0.1}, scaler=scaler)

    model2, optimizer2, scheduler2 = _objects()
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    loaded = checkpoint.load_if_compatible(
        tmp_path, model=model2, optimizer=optimizer2, scheduler=scheduler2,
        class_names=["a", "b"], hyperparameters={"lr": 0.1}, scaler=scaler2)
    assert loaded is not None and loaded.epoch == 1
    assert scaler2.get_scale() == 123.0
    assert loaded.mid_epoch is not None and loaded.mid_epoch.epoch == 2
    assert loaded.mid_epoch.progress == [progress]
    torch.manual_seed(0)
    random.seed(0)
    checkpoint.restore_rng(loaded.mid_epoch.rng[0])
    assert torch.equal(torch.rand(3), expected_draws[0]) and random.random() == expected_draws[1]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  model2.state_dict().values(), strict=True))
