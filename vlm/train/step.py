"""The train step: a pure function of (state, batch), jitted with explicit shardings and a donated state.

Its random key is `fold_in(key(seed), state.step)`, a function of the step number only, so a run resumed
from a checkpoint draws exactly the randomness (dropout, DropToken, random attention blocks) that the
uninterrupted run would have.

The step does not branch on non-finite values (that would need a host round trip per step); it reports
`train/finite/*` (loss, gradients, the new parameters and optimizer state) and the trainer checks them one step
behind the device, before anything is logged or saved.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vlm.parallel import partitioning
from vlm.train import state as state_lib

Metrics = dict[str, jax.Array]


def make_train_step(task: Any, tx: optax.GradientTransformation, schedule: Callable[[Any], jax.Array],
                    seed: int) -> Callable[[state_lib.TrainState, dict], tuple[state_lib.TrainState, Metrics]]:
  """Returns the pure train step for `task` (not yet jitted).

  Args:
    task: object with `loss_fn(params, model_state, batch, rng, *, train) -> (loss, (metrics, model_state))`.
    tx: the optimizer.
    schedule: `step -> lr`, only for logging the learning rate.
    seed: `config.seed`; the step's key is `fold_in(key(seed), step)`.
  """

  def train_step(state: state_lib.TrainState, batch: dict) -> tuple[state_lib.TrainState, Metrics]:
    rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
      return task.loss_fn(params, state.model_state, batch, rng, train=True)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if new_model_state is None:
      new_model_state = state.model_state
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=new_model_state)

    grad_norm = optax.tree.norm(grads)
    out = {f"train/{k}": jnp.mean(v).astype(jnp.float32) for k, v in (metrics or {}).items()}
    out.update({
        "train/loss": jnp.asarray(loss, jnp.float32),
        "train/grad_norm": grad_norm.astype(jnp.float32),
        "train/param_norm": optax.tree.norm(params).astype(jnp.float32),
        "train/update_norm": optax.tree.norm(updates).astype(jnp.float32),
        "train/lr": jnp.asarray(schedule(state.step), jnp.float32),
    })
    # What the NaN guard reads (trainer._check_finite): the loss and gradients of this step's input AND the
    # parameters and optimizer state the step produced, so a checkpoint of a state that passed is usable. A norm
    # that overflows float32 counts as non-finite too: such a state cannot train on.
    finite = {"loss": jnp.isfinite(loss), "gradients": jnp.isfinite(grad_norm),
              "parameters": jnp.isfinite(out["train/param_norm"]),
              "optimizer_state": _finite(opt_state)}
    out.update({f"train/finite/{k}": v.astype(jnp.float32) for k, v in finite.items()})
    return new_state, out

  return train_step


def _finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)




def jit_train_step(train_step: Callable, state_shardings: Any, batch_sharding: jax.sharding.Sharding,
                   mesh: jax.sharding.Mesh) -> Callable:
  """jit with the state donated and sharded in place; the batch split over the batch axes; metrics replicated."""
  return jax.jit(
      train_step,
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, partitioning.replicated(mesh)),
      donate_argnums=(0,),
  )
