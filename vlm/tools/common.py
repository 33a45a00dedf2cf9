"""Helpers shared by the command-line tools (no flags here: each tool module defines its own)."""
from __future__ import annotations


def cost_flops(compiled) -> float:
  """Total FLOPs of a compiled computation according to XLA's cost analysis (summed over devices)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))
