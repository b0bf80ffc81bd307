"""A small numpy training pipeline instrumented with wattspan.

Run it under the agent:

    wattspan run --name logreg -- python examples/pipeline.py --epochs 20

Stages (load, preprocess, train, evaluate) become spans with their CPU time, memory and
energy; loss and accuracy are logged per epoch, the confusion matrix at the end.
"""

from __future__ import annotations

import argparse

import numpy as np

import wattspan


@wattspan.track
def load(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs in 20 dimensions: a task logistic regression can learn."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    centers = np.where(y[:, None] == 1, 0.12, -0.12)
    x = rng.normal(centers, 1.0, size=(n, 20))
    wattspan.count_items(n)
    return x, y


@wattspan.track("preprocess")
def preprocess(x: np.ndarray) -> np.ndarray:
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    wattspan.count_items(len(x))
    return (x - mean) / std


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def train(x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int) -> np.ndarray:
    w = np.zeros(x.shape[1] + 1)
    xb = np.hstack([x, np.ones((len(x), 1))])
    with wattspan.span("train", params={"lr": lr, "batch": batch, "epochs": epochs}):
        for epoch in range(epochs):
            with wattspan.span("epoch", epoch=epoch):
                for i in range(0, len(xb), batch):
                    xs, ys = xb[i : i + batch], y[i : i + batch]
                    grad = xs.T @ (sigmoid(xs @ w) - ys) / len(xs)
                    w -= lr * grad
                wattspan.count_items(len(xb))
            p = sigmoid(xb @ w)
            loss = float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))
            acc = float(np.mean((p > 0.5) == y))
            wattspan.log_metric("loss", loss, step=epoch)
            wattspan.log_metric("accuracy", acc, step=epoch)
    return w


@wattspan.track
def evaluate(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    xb = np.hstack([x, np.ones((len(x), 1))])
    pred = (sigmoid(xb @ w) > 0.5).astype(int)
    matrix = [[int(np.sum((y == t) & (pred == p))) for p in (0, 1)] for t in (0, 1)]
    wattspan.log_confusion_matrix(matrix, labels=["neg", "pos"])
    acc = float(np.mean(pred == y))
    wattspan.log_metric("test_accuracy", acc)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x, y = load(args.samples, args.seed)
    x = preprocess(x)
    split = int(0.8 * len(x))
    w = train(x[:split], y[:split], args.epochs, args.lr, args.batch)
    acc = evaluate(w, x[split:], y[split:])
    print(f"test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
