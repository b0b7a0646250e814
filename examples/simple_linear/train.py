"""Train SimpleLinearModel on y = 2x - 1 and save its state_dict as model.pth.

Usage: python examples/simple_linear/train.py [--output-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from model import SimpleLinearModel  # noqa: E402

TOLERANCE = 0.01
MAX_STEPS = 10_000


def train(output_dir: str) -> str:
    """Fit y = 2x - 1 until f(5.0) is within TOLERANCE of 9.0; return the saved path."""
    torch.manual_seed(0)
    model = SimpleLinearModel()
    xs = torch.linspace(-5.0, 5.0, 21).unsqueeze(1)
    ys = 2.0 * xs - 1.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    loss_fn = torch.nn.MSELoss()
    probe = torch.tensor([[5.0]])
    for step in range(MAX_STEPS):
        optimizer.zero_grad()
        loss = loss_fn(model(xs), ys)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pred = model(probe).item()
        if abs(pred - 9.0) < TOLERANCE:
            break
    else:
        raise RuntimeError(f"did not converge in {MAX_STEPS} steps: f(5.0) = {pred:.4f}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.pth")
    torch.save(model.state_dict(), path)
    print(f"trained in {step + 1} steps: f(5.0) = {pred:.4f}, loss = {loss.item():.6f}", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=HERE, help="where to write model.pth (default: this folder)")
    args = parser.parse_args(argv)
    print(train(args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
