"""A small CNN for 3x32x32 images and 10 classes, exported as TorchScript.

The weights are random (seeded), so predictions are meaningless but deterministic: the
example shows image decoding, batching and top-k output, not accuracy.

Usage: python examples/image_classifier/model.py [--output-dir DIR]   # writes DIR/model.pt
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_CLASSES = 10


class SmallCNN(nn.Module):
    """conv(3->16) -> pool -> conv(16->32) -> pool -> linear(2048->10); returns logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32x32 -> 16x16
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16 -> 8x8
        )
        self.classifier = nn.Linear(32 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 32, 32) -> (N, num_classes)
        return self.classifier(torch.flatten(self.features(x), 1))


def export_torchscript(output_dir: str) -> str:
    """Build the seeded model, script it and save it as output_dir/model.pt; return the path."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.pt")
    with warnings.catch_warnings():
        # TorchScript is deprecated in recent torch but is what serialized-file-only archives load.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the seeded SmallCNN as TorchScript model.pt.")
    parser.add_argument("--output-dir", default=HERE, help="where to write model.pt (default: this folder)")
    args = parser.parse_args(argv)
    print(export_torchscript(args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
