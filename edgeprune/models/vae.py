"""A small convolutional VAE for 8×8 grey images (scikit-learn's digits) and its training loop.

It is the autoencoder that reconstruction-guided pruning is tested and benchmarked on:
``prune_channels(vae, x, within="encoder", criterion="taylor", loss=reconstruction_loss)``
scores the encoder's channels by how much the *decoder's* reconstruction would suffer, and
leaves the decoder whole. In eval mode the VAE reconstructs from the posterior mean, so
pruning, scoring and evaluation are deterministic.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError


class ConvVAE(nn.Module):
    """Encoder: three 3×3 conv-BN-ReLU layers (8×8 → 4×4) and a linear head giving mean and log-variance;
    decoder: linear, a transposed conv back to 8×8, a 3×3 conv and a sigmoid."""

    def __init__(self, width: int = 32, latent: int = 8) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * 16, 2 * latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 2 * width * 16), nn.ReLU(), nn.Unflatten(1, (2 * width, 4, 4)),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, _ = self.encoder(x).chunk(2, dim=1)
        return self.decoder(mean)

    def loss(self, x: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
        """Training loss per image: summed squared reconstruction error + beta · KL to N(0, I)."""
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        reconstruction = F.mse_loss(self.decoder(z), x, reduction="sum")
        kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum()
        return (reconstruction + beta * kl) / len(x)


def reconstruction_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Summed squared reconstruction error: the loss whose sensitivity ranks the encoder's channels."""
    return F.mse_loss(model(batch), batch, reduction="sum")


def load_digits_images() -> torch.Tensor:
    """scikit-learn's 1797 real 8×8 handwritten digits as (N, 1, 8, 8) floats in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EdgepruneError("the digits dataset needs scikit-learn", "pip install scikit-learn") from None
    images = load_digits().images.astype(np.float32) / 16.0
    return torch.from_numpy(images).unsqueeze(1)


def train_vae(model: ConvVAE, images: torch.Tensor, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3,
              seed: int = 0) -> list[float]:
    """Adam on ``images`` in a seeded order; returns the mean loss of every epoch. Leaves the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch_size):
            batch = images[order[start:start + batch_size]]
            loss = model.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        history.append(total / len(images))
    model.eval()
    return history


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: 10·log10(1 / MSE)."""
    mse = float(F.mse_loss(reconstruction, target))
    return 10.0 * float(np.log10(1.0 / max(mse, 1e-12)))
