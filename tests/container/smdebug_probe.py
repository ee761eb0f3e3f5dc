"""Run inside the training image: smdebug hooks a torch model, writes tensors, reads them back.

Prints ``SMDEBUG_OK <steps> <loss values>`` on success; any failure raises (non-zero exit).
"""

import sys
import tempfile

import smdebug.pytorch as smd
import torch
from smdebug.trials import create_trial

out_dir = tempfile.mkdtemp(prefix="smdebug-")
model = torch.nn.Sequential(torch.nn.Linear(4, 3))
loss_fn = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

hook = smd.Hook(out_dir=out_dir, save_config=smd.SaveConfig(save_interval=1),
                include_collections=["losses", "weights"])
hook.register_module(model)
hook.register_loss(loss_fn)
hook.set_mode(smd.modes.TRAIN)
torch.manual_seed(0)
for _ in range(3):
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
hook.close()

trial = create_trial(out_dir)
loss_names = trial.tensor_names(collection="losses")
assert loss_names, f"no loss tensor written to {out_dir}: {trial.tensor_names()}"
loss = trial.tensor(loss_names[0])
steps = loss.steps(mode=smd.modes.TRAIN)
assert len(steps) == 3, steps
values = [float(loss.value(s, mode=smd.modes.TRAIN)) for s in steps]
print("SMDEBUG_OK", len(steps), " ".join(f"{v:.4f}" for v in values))
sys.exit(0)
