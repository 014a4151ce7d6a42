"""Python with chosen packages made unimportable (as if not installed), and a user loop that needs only the core."""
import subprocess
import sys
import textwrap
from pathlib import Path

from distill_ee.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]

#: makes the packages named in sys.argv[1] unimportable, as if they were not installed
BLOCKER = '''
import importlib.machinery
import sys
BLOCKED = set(sys.argv[1].split(","))
_find_spec = importlib.machinery.PathFinder.find_spec


def find_spec(fullname, path=None, target=None):
    return None if fullname.split(".")[0] in BLOCKED else _find_spec(fullname, path, target)


importlib.machinery.PathFinder.find_spec = find_spec
'''

USER_LOOP = '''
import torch
from torch import nn
import distill_ee

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.fc(self.pool2(self.relu2(self.conv2(x))).flatten(1))

SCHEDULE = """
version: 1
early_exits:
  branchy:
    class: EarlyExit
    exits:
      exit1: {attach: pool1, branch: [adaptive_avgpool, flatten, linear], loss_weight: 0.3, threshold: 0.5}
pruners:
  filters:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.25
    final_sparsity: 0.5
    group_type: Filters
    weights: [conv2.weight]
extensions:
  thinner: {class: FilterRemover, thinning_func_str: remove_filters}
policies:
  - early_exit: {instance_name: branchy}
    starting_epoch: 0
    ending_epoch: 3
  - pruner: {instance_name: filters}
    starting_epoch: 0
    ending_epoch: 2
  - extension: {instance_name: thinner}
    epochs: [2]
"""
torch.manual_seed(0)
model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = distill_ee.schedule_from_text(model, optimizer, SCHEDULE, example_input=torch.zeros(1, 1, 28, 28))
x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
for epoch in range(3):
    scheduler.on_epoch_begin(epoch)
    for i in range(2):
        scheduler.on_minibatch_begin(epoch, i, 2)
        loss = nn.functional.cross_entropy(model(x), y)
        loss = scheduler.before_backward_pass(epoch, i, 2, loss, target=y)
        optimizer.zero_grad()
        loss.backward()
        scheduler.before_parameter_optimization(epoch, i, 2)
        optimizer.step()
        scheduler.on_minibatch_end(epoch, i, 2)
    scheduler.on_epoch_end(epoch)
distill_ee.save_checkpoint(sys.argv[2], model, optimizer=optimizer, scheduler=scheduler, epoch=2)
fresh = Net()
distill_ee.load_checkpoint(fresh, sys.argv[2])
multi = distill_ee.EarlyExits.of(fresh).multi_exit_model().eval()
logits, exit_index = multi(x)
print("conv2 filters", fresh.conv2.out_channels, "logits", tuple(logits.shape))
print("distill_ee from", distill_ee.__file__)
print("optional packages imported:", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
'''

OPTIONAL = ",".join(EXTRAS)


def run_python(code: str, blocked: str, *args: str, cwd: Path = ROOT, env=None) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter in which the packages in ``blocked`` cannot be imported."""
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), blocked, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)
