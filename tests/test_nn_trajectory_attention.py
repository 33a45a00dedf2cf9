"""TW-BERT's cross-modal attention (vlm/nn/trajectory_attention.py) against a loop-by-loop numpy reference."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import trajectory_attention as ta

B, L, T, N, D, H = 2, 3, 2, 4, 8, 2
K = D // H


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _layer_norm(x, scale, bias, eps=1e-12):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _reference(p, text, mask, video, mode):
  """One word / frame / head at a time, from the module docstring's definitions."""
  lin = lambda name, x: np.einsum("...d,dhk->...hk", x, p[name]["kernel"]) + p[name]["bias"]
  out = lambda name, x: np.einsum("...hk,hkd->...d", x, p[name]["kernel"]) + p[name]["bias"]
  cls, patches = video[:, 0], video[:, 1:].reshape(B, T, N, D)
  new_text = np.zeros((B, L, H, K))
  new_video = np.zeros((B, 1 + T * N, H, K))
  weights = np.zeros((B, H, L, T))
  for b in range(B):
    wq, wk, wv = lin("word_query", text[b]), lin("word_key", text[b]), lin("word_value", text[b])
    if mode == "t2w":
      traj = np.zeros((L, T, H, K))
      for t in range(T):
        q, kk, vv = lin("query", text[b]), lin("key", patches[b, t]), lin("value", patches[b, t])
        for h in range(H):
          for i in range(L):
            a = _softmax(kk[:, h] @ q[i, h] / np.sqrt(K))
            traj[i, t, h] = a @ vv[:, h]
      traj = _layer_norm(out("trajectory_out", traj), p["trajectory_norm"]["scale"], p["trajectory_norm"]["bias"])
      tk, tv = lin("word_key", traj), lin("word_value", traj)  # [L, T, H, K]
    for h in range(H):
      for i in range(L):
        if mode == "t2w":
          keys, values = np.concatenate([wk[:, h], tk[i, :, h]]), np.concatenate([wv[:, h], tv[i, :, h]])
        else:
          pk, pv = lin("word_key", patches[b].reshape(T * N, D)), lin("word_value", patches[b].reshape(T * N, D))
          keys, values = np.concatenate([wk[:, h], pk[:, h]]), np.concatenate([wv[:, h], pv[:, h]])
        logits = keys @ wq[i, h] / np.sqrt(K)
        logits[:L][mask[b] == 0] = -1e9
        a = _softmax(logits)
        new_text[b, i, h] = a @ values
        frame = a[L:] if mode == "t2w" else a[L:].reshape(T, N).sum(-1)
        weights[b, h, i] = frame / frame.sum()
    cls_outs = []
    for t in range(T):
      queries = lin("query", np.concatenate([cls[b][None], patches[b, t]]))  # [1 + N, H, K]
      keys_src = np.concatenate([text[b], patches[b, t], cls[b][None]])
      kk, vv = lin("key", keys_src), lin("value", keys_src)
      valid = np.concatenate([mask[b], np.ones(N + 1)])
      frame_out = np.zeros((1 + N, H, K))
      for h in range(H):
        for q in range(1 + N):
          logits = kk[:, h] @ queries[q, h] / np.sqrt(K)
          logits[valid == 0] = -1e9
          frame_out[q, h] = _softmax(logits) @ vv[:, h]
      cls_outs.append(frame_out[0])
      new_video[b, 1 + t * N:1 + (t + 1) * N] = frame_out[1:]
    new_video[b, 0] = np.mean(cls_outs, axis=0)
  return out("out", new_text), out("out", new_video), weights


@pytest.mark.parametrize("mode", ["t2w", "p2w"])
def test_attention_matches_the_numpy_reference(mode):
  rng = np.random.default_rng(0)
  text = rng.normal(size=(B, L, D)).astype(np.float32)
  video = rng.normal(size=(B, 1 + T * N, D)).astype(np.float32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
  module = ta.TrajectoryWordAttention(num_heads=H, frames=T, mode=mode)
  params = nn.meta.unbox(module.init(jax.random.key(0), text, mask, video)["params"])
  # Random biases and norm parameters too, so that every term is checked.
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape).astype(np.float32)), params)
  new_text, new_video, aux = module.apply({"params": params}, text, mask, video)
  p = jax.tree.map(np.asarray, params)
  ref_text, ref_video, ref_weights = _reference(p, text, mask, video, mode)
  np.testing.assert_allclose(np.asarray(new_text), ref_text, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(new_video), ref_video, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(aux["frame_weights"]), ref_weights, rtol=2e-4, atol=1e-5)
  if mode == "t2w":
    assert aux["word_patch_attention"].shape == (B, H, T, L, N)
    assert "trajectory_out" in params
  else:
    assert "trajectory_out" not in params


def test_padded_words_change_nothing_valid_and_layers_stack():
  rng = np.random.default_rng(1)
  text = rng.normal(size=(B, L, D)).astype(np.float32)
  video = rng.normal(size=(B, 1 + T * N, D)).astype(np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
  stack = ta.transformer.Stack(ta.TrajectoryWordBlock, 2, dict(num_heads=H, mlp_dim=16, frames=T))
  variables = stack.init(jax.random.key(0), text, {"video": video}, {"text_mask": mask})
  run = lambda x: stack.apply(variables, x, {"video": video}, {"text_mask": mask})
  out, aux = run(text)
  changed = text.copy()
  changed[0, 2] += 5.0
  changed[1, 1:] -= 3.0
  out2, aux2 = run(changed)
  np.testing.assert_allclose(np.asarray(out2[0, :2]), np.asarray(out[0, :2]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(out2[1, :1]), np.asarray(out[1, :1]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(aux2["video"]), np.asarray(aux["video"]), atol=1e-5)
  assert len(aux["layers"]) == 2 and aux["layers"][1]["frame_weights"].shape == (B, H, L, T)
  with pytest.raises(ValueError, match="not \\[CLS\\] \\+ 3 frames"):
    ta.TrajectoryWordAttention(num_heads=H, frames=3).init(jax.random.key(0), text, mask, video)
