"""A token-id text classifier (nn.Embedding first) for the tests of integer model inputs."""
import torch
from torch import nn

VOCAB, TOKENS, DIM, CLASSES = 50, 6, 16, 3


class TextClassifier(nn.Module):
    """Token ids (N, T) -> embedding -> transformer encoder -> mean over tokens -> linear logits."""

    def __init__(self, vocab: int = VOCAB, dim: int = DIM, classes: int = CLASSES, layers: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        block = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


class MaskedTextClassifier(TextClassifier):
    """The classifier with timm-style extra forward arguments that default to "not given"."""

    def forward(self, ids: torch.Tensor, mask=None, pool: str = "mean") -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids), src_key_padding_mask=mask).mean(dim=1))


def token_ids(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` sequences of TOKENS ids in [0, VOCAB)."""
    return torch.randint(0, VOCAB, (n, TOKENS), generator=torch.Generator().manual_seed(seed))
