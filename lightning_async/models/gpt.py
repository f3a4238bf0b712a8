"""A small GPT-style character (byte) language model.

Decoder-only transformer: token and learned position embeddings, ``n_layer`` pre-LayerNorm blocks of causal
self-attention (:func:`torch.nn.functional.scaled_dot_product_attention`) and a GELU MLP, a final LayerNorm and a
linear head tied to the token embedding. Tokens are bytes (``vocab_size=256``), as produced by
:class:`~lightning_async.data.TextDataModule`. The loss is next-token cross-entropy; ``val/acc`` is next-token
accuracy.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F

from lightning_async.models._base import ClassificationModule, check_positive_int, check_probability


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention.

    Args:
        n_embd: Embedding width; must be divisible by ``n_head``.
        n_head: Number of attention heads.
        dropout: Dropout probability on the attention weights and the output projection.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        q, k, v = (t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(batch, time, channels)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTNetwork(nn.Module):
    """The transformer itself (no Lightning): ``(batch, time)`` token ids to ``(batch, time, vocab_size)`` logits."""

    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(n_embd, n_head, dropout) for _ in range(n_layer)))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        time = idx.shape[1]
        if time > self.block_size:
            raise ValueError(
                f"Input length {time} exceeds the model's `block_size` ({self.block_size}); "
                f"set `model.block_size` >= `data.block_size`."
            )
        pos = torch.arange(time, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        return self.head(self.ln_f(self.blocks(x)))


class CharGPT(ClassificationModule):
    """Character-level (byte-level) GPT as a LightningModule.

    Args:
        vocab_size: Number of token ids; 256 for the bytes produced by ``TextDataModule``.
        block_size: Longest context, in tokens (size of the position embedding). Must be at least the data
            module's ``block_size``.
        n_layer: Number of transformer blocks.
        n_head: Number of attention heads per block.
        n_embd: Embedding width; must be divisible by ``n_head``.
        dropout: Dropout probability.
        optimizer: Callable that builds the optimizer from the parameters (``model.optimizer`` in YAML).
        scheduler: Optional callable that builds a learning-rate scheduler from the optimizer.
        scheduler_interval: Whether the scheduler steps every optimizer ``"step"`` or every ``"epoch"``.

    Example::

        >>> import torch
        >>> CharGPT(block_size=8, n_layer=1, n_head=2, n_embd=16)(torch.zeros(3, 8, dtype=torch.long)).shape
        torch.Size([3, 8, 256])
    """

    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
    ) -> None:
        super().__init__(vocab_size, optimizer, scheduler, scheduler_interval)
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                            ("n_head", n_head), ("n_embd", n_embd)):
            check_positive_int(name, value)
        if n_embd % n_head:
            raise ValueError(
                f"`n_embd` must be divisible by `n_head`, got n_embd={n_embd!r} and n_head={n_head!r}."
            )
        check_probability("dropout", dropout)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = GPTNetwork(vocab_size, block_size, n_layer, n_head, n_embd, dropout)

    def setup(self, stage: str) -> None:
        """Check that the data fits the model before any step (vocabulary and context length)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        data_block = getattr(datamodule, "block_size", None)
        if isinstance(data_block, int) and data_block > self.hparams.block_size:
            raise ValueError(
                f"`data.block_size` ({data_block}) exceeds `model.block_size` ({self.hparams.block_size}); "
                f"set `--model.block_size={data_block}` or lower `--data.block_size`."
            )
        data_vocab = getattr(datamodule, "vocab_size", None)
        if isinstance(data_vocab, int) and data_vocab > self.hparams.vocab_size:
            raise ValueError(
                f"`model.vocab_size` ({self.hparams.vocab_size}) is smaller than the data's vocabulary "
                f"({data_vocab}); set `--model.vocab_size={data_vocab}`."
            )

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt ``idx`` of shape ``(batch, time)``.

        Args:
            idx: Prompt token ids, shape ``(batch, time)``.
            max_new_tokens: Number of tokens to append.
            temperature: Softmax temperature; must be positive.

        Returns:
            The prompt followed by the sampled tokens, shape ``(batch, time + max_new_tokens)``.
        """
        if temperature <= 0:
            raise ValueError(f"`temperature` must be positive, got {temperature!r}.")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.hparams.block_size :])[:, -1, :] / temperature
            idx = torch.cat([idx, torch.multinomial(torch.softmax(logits, dim=-1), 1)], dim=1)
        return idx
