r"""Our train step against its PyTorch twin from HF transformers, same shapes and threads, interleaved in one run.

  python -m vlm.tools.peer_bench --peer=timesformer                       # TimeSformer-B/16, 8 frames of 224
  python -m vlm.tools.peer_bench --peer=timesformer --frames=4 --batch=2 --steps=5

Both sides run one training step: the video encoder's forward on a [B, T, H, W, 3] clip (PyTorch: [B, T, 3, H,
W]), a stand-in loss (the mean square of the [CLS] output, so the backward reaches every layer), the backward and
an AdamW update (lr 1e-4, weight decay 0.01). Ours is the jitted JAX step (`vlm.models.timesformer.TimeSformer`,
dense attention, float32); the peer is HF transformers' `TimesformerModel` with the same width, depth, heads, patch
and frame count (its divided space-time attention: the same architecture, as tests/test_models_timesformer.py
checks numerically), float32 eager, `torch.set_num_threads` = this machine's cores, as XLA:CPU uses.

The two take turns, step for step, after `--warmup` untimed steps each, so both see the same machine; the report
gives each side's median step time, the ratio (peer / ours: > 1 means ours is faster), and the FLOPs each counts
for one step (ours: XLA's cost analysis; the peer: torch's FlopCounterMode over forward and backward matmuls), whose
ratio near 1 says the two do the same work.

Needs `torch` and `transformers` (the test extra installs them).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlm.tools import common

PEERS = ("timesformer",)
BASE = dict(num_layers=12, hidden_size=768, mlp_dim=3072, num_heads=12, patch_size=16)

class OurStep:
  """The jitted JAX TimeSformer train step (forward, stand-in loss, backward, AdamW)."""

  def __init__(self, sizes: dict[str, int], frames: int, image_size: int, batch: int):
    from vlm.models import timesformer  # pylint: disable=g-import-not-at-top
    import flax  # pylint: disable=g-import-not-at-top
    self.model = timesformer.TimeSformer(**sizes, frames=frames, image_size=image_size, drop_path_rate=0.0)
    self.video = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, frames, image_size, image_size, 3)),
                             jnp.float32)
    params = flax.core.meta.unbox(jax.jit(lambda: self.model.init(jax.random.key(0), self.video))()["params"])
    self.tx = optax.adamw(1e-4, weight_decay=0.01)
    self.state = (params, self.tx.init(params))

    def step(state, video):
      params, opt = state

      def loss_fn(p):
        _, aux = self.model.apply({"params": p}, video, train=True)
        return jnp.mean(jnp.square(aux["pooled"]))

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt = self.tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt), loss

    compiled = jax.jit(step, donate_argnums=0).lower(self.state, self.video).compile()
    self.flops = common.cost_flops(compiled)
    self._step = compiled

  def __call__(self) -> float:
    t = time.perf_counter()
    self.state, loss = self._step(self.state, self.video)
    jax.block_until_ready(loss)
    return time.perf_counter() - t


class PeerStep:
  """HF transformers' TimesformerModel train step in PyTorch (eager, float32)."""

  def __init__(self, sizes: dict[str, int], frames: int, image_size: int, batch: int, threads: int):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = transformers.TimesformerConfig(
        image_size=image_size, patch_size=sizes["patch_size"], num_frames=frames, hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["num_layers"], num_attention_heads=sizes["num_heads"],
        intermediate_size=sizes["mlp_dim"], attention_type="divided_space_time", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, drop_path_rate=0)
    self.model = transformers.TimesformerModel(config).train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
    self.video = torch.from_numpy(np.random.default_rng(0).uniform(
        -1, 1, (batch, frames, 3, image_size, image_size)).astype(np.float32))
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
      self._loss().backward()
    self.opt.zero_grad(set_to_none=True)
    self.flops = float(counter.get_total_flops())

  def _loss(self):
    out = self.model(pixel_values=self.video).last_hidden_state[:, 0]
    return (out * out).mean()

  def __call__(self) -> float:
    t = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    self._loss().backward()
    self.opt.step()
    return time.perf_counter() - t


def compare(*, sizes: dict[str, int] | None = None, frames: int = 8, image_size: int = 224, batch: int = 1,
            steps: int = 5, warmup: int = 1, threads: int = 0) -> dict[str, Any]:
  """Times our step and the peer's in turns; returns both medians, their ratio and both FLOP counts."""
  sizes = dict(sizes or BASE)
  threads = threads or (os.cpu_count() or 1)
  ours = OurStep(sizes, frames, image_size, batch)
  peer = PeerStep(sizes, frames, image_size, batch, threads)
  for _ in range(warmup):
    ours(), peer()
  times = {"ours": [], "peer": []}
  for i in range(max(steps, 1)):
    times["ours"].append(ours())
    times["peer"].append(peer())
    print(f"step {i + 1}/{steps}: ours {times['ours'][-1]:.3f} s, peer {times['peer'][-1]:.3f} s", file=sys.stderr,
          flush=True)
  o, p = statistics.median(times["ours"]), statistics.median(times["peer"])
  return {"peer": "HF transformers TimesformerModel (PyTorch)", "frames": frames, "image_size": image_size,
          "batch": batch, "threads": threads, "tokens": 1 + frames * (image_size // sizes["patch_size"]) ** 2,
          "ours_step_seconds_median": o, "peer_step_seconds_median": p, "speedup_peer_over_ours": p / o,
          "ours_gflop": ours.flops / 1e9, "peer_gflop": peer.flops / 1e9,
          "flops_ratio_peer_over_ours": peer.flops / ours.flops if ours.flops else float("nan"),
          "allocator": os.path.basename(os.environ.get("LD_PRELOAD", "")) or "system (glibc)"}


def _define_flags() -> dict[str, Any]:
  """The command line's flags, defined only when run as a program (other tools define `steps`, `batch`, ...)."""
  return dict(
      peer=flags.DEFINE_enum("peer", "timesformer", PEERS, "Which twin to time."),
      frames=flags.DEFINE_integer("frames", 8, "Frames per clip."),
      image_size=flags.DEFINE_integer("image_size", 224, "Frame height and width."),
      batch=flags.DEFINE_integer("batch", 1, "Clips per step."),
      steps=flags.DEFINE_integer("steps", 5, "Timed steps per side (median)."),
      warmup=flags.DEFINE_integer("warmup", 1, "Untimed steps per side after compilation."))


def main(argv, args: dict[str, Any]):
  del argv
  report = compare(**{k: v.value for k, v in args.items() if k != "peer"})
  if common.JSON.value:
    print(json.dumps(report, indent=1))
    return
  for k, v in report.items():
    print(f"  {k:30s} {v:.4g}" if isinstance(v, float) else f"  {k:30s} {v}")


if __name__ == "__main__":
  from vlm import allocator  # pylint: disable=g-import-not-at-top
  allocator.reexec_with_fast_malloc()
  _ARGS = _define_flags()
  app.run(lambda argv: main(argv, _ARGS))
