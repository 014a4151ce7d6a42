"""The small model the deployment tests export: three conv blocks, the third reading the first's output too (a
value carried across both exits after r1 and r2)."""
from torch import nn

#: the exit branch the deployment tests attach
HEAD = ["adaptive_avgpool", "flatten", "linear"]


class Skip(nn.Module):
    """Three conv blocks; the third reads the first's output too (a value carried across both exits)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        a = self.r1(self.c1(x))
        b = self.r2(self.c2(a))
        return self.fc(self.c3(b + a).mean(dim=(2, 3)))
