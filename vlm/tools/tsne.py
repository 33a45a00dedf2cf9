"""Exact t-SNE (van der Maaten & Hinton 2008) in numpy, for plotting a few hundred embeddings in the colabs.

HierVL's supplement (section 2) plots summary and child-narration text features with t-SNE; the stack has no
scikit-learn, and for N <= ~1000 points the exact O(N^2) method takes seconds:

  xy = tsne.embed(features, perplexity=30.0, steps=500, seed=0)   # [N, D] -> [N, 2]

Per point, a binary search finds the Gaussian bandwidth whose conditional distribution has the given perplexity;
the joint P is symmetrised; the map follows gradient descent with momentum (0.5, then 0.8) and early
exaggeration (x12 for the first 100 steps) on KL(P || Q) with a Student-t Q.
"""
from __future__ import annotations

import numpy as np


def joint_probabilities(x: np.ndarray, perplexity: float) -> np.ndarray:
  """[N, D] -> symmetric [N, N] P (zero diagonal, sums to 1), each row's bandwidth set by `perplexity`."""
  x = np.asarray(x, np.float64)
  n = len(x)
  if not 1.0 <= perplexity < n:
    raise ValueError(f"perplexity={perplexity}: expected a value in [1, N={n}).")
  d2 = np.maximum(np.sum(x * x, 1)[:, None] + np.sum(x * x, 1)[None] - 2 * x @ x.T, 0.0)
  target = np.log(perplexity)
  p = np.zeros((n, n))
  for i in range(n):
    lo, hi, beta = 0.0, np.inf, 1.0
    row = np.delete(d2[i], i)
    for _ in range(64):
      w = np.exp(-(row - row.min()) * beta)
      q = w / w.sum()
      entropy = -np.sum(q * np.log(np.maximum(q, 1e-300)))
      if abs(entropy - target) < 1e-5:
        break
      if entropy > target:  # too flat: narrow the kernel
        lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
      else:
        hi, beta = beta, (beta + lo) / 2
    p[i, np.arange(n) != i] = q
  p = (p + p.T) / (2 * n)
  return np.maximum(p, 1e-12)


def embed(x: np.ndarray, *, perplexity: float = 30.0, steps: int = 500, learning_rate: float = 200.0,
          seed: int = 0) -> np.ndarray:
  """[N, D] features -> [N, 2] t-SNE map (deterministic for a seed)."""
  p = joint_probabilities(x, min(perplexity, (len(x) - 1) / 3))
  rng = np.random.default_rng(seed)
  y = rng.normal(0.0, 1e-4, (len(p), 2))
  velocity = np.zeros_like(y)
  gains = np.ones_like(y)
  for step in range(steps):
    exaggeration = 12.0 if step < 100 else 1.0
    d2 = np.sum(y * y, 1)[:, None] + np.sum(y * y, 1)[None] - 2 * y @ y.T
    num = 1.0 / (1.0 + d2)
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.sum(), 1e-12)
    pq = (exaggeration * p - q) * num
    grad = 4.0 * (np.diag(pq.sum(1)) - pq) @ y
    gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
    velocity = (0.5 if step < 250 else 0.8) * velocity - learning_rate * gains * grad
    y = y + velocity
    y = y - y.mean(0)
  return y
