"""TubeViT: parameter counts against table 2, images and clips through one model, config wiring."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm.models import tubevit


def _count(model, shape):
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant,exact", [("B", 86_239_488), ("L", 303_889_408), ("H", 631_653_120)])
def test_parameter_counts_match_table2(variant, exact):
  n = _count(tubevit.Model(**tubevit.SIZES[variant]), (1, 32, 224, 224, 3))
  assert n == exact
  assert abs(n / tubevit.TABLE2_PARAMS[variant] - 1) < 0.015
  # The tubes add one shared 8x8x8x3xD kernel and a bias per tube, whatever their number and shapes.
  more = _count(tubevit.Model(**tubevit.SIZES[variant], tubes="charades"), (1, 128, 224, 224, 3))
  assert more == n


def test_one_model_for_images_and_clips_and_posemb_depends_on_position():
  spec = ({"kernel": (2, 4, 4), "stride": (4, 8, 8)}, {"kernel": (1, 8, 8), "stride": (8, 8, 8)})
  model = tubevit.Model(**tubevit.SIZES["tiny"], tubes=spec, base_kernel=(2, 4, 4))
  clip = jax.random.normal(jax.random.key(1), (2, 8, 16, 24, 3))  # H != W
  variables = model.init(jax.random.key(0), clip)
  feats, aux = model.apply(variables, clip)
  assert feats.shape == (2, 64) and aux["tube_sizes"] == [2 * 2 * 3, 1 * 2 * 3]
  image_feats, image_aux = model.apply(variables, clip[:, :1])
  assert image_feats.shape == (2, 64) and image_aux["tube_sizes"] == [0, 6]
  # Fixed position code: moving content changes the features even for a bag-of-tokens-invariant pooling.
  flipped, _ = model.apply(variables, clip[:, :, :, ::-1])
  assert not np.allclose(flipped, feats, atol=1e-4)


def test_defaults_are_tubevit_b():
  assert {k: getattr(tubevit.Model(), k) for k in tubevit.SIZES["B"]} == tubevit.SIZES["B"]


def test_build_backbone_reads_config():
  c = ml_collections.ConfigDict(dict(model=dict(name="tubevit", variant="tiny", pool="gap",
                                                tubes=[dict(kernel=(1, 8, 8), stride=(1, 8, 8))])))
  m = tubevit.build_backbone(c)
  assert (m.hidden_size, m.num_layers, m.pool, m.tubes[0].kernel) == (64, 2, "gap", (1, 8, 8))
  assert m.token_counts((4, 32, 32))["total"] == 4 * 16
  c.model.update(variant="B", num_layers=6)  # a key of config.model is a field: it overrides the size
  assert (tubevit.Model.from_config(c).num_layers, tubevit.Model.from_config(c).hidden_size) == (6, 768)


@pytest.mark.parametrize("model,match", [
    (dict(variant="X"), r"config.model.variant='X': tubevit has no size 'X'; expected one of \['B', 'H', 'L', 'tiny'\]"),
    (dict(variant="tiny", tiny=True), r"config.model.tiny: not a field of vlm.models.tubevit.Model; fields: num_layers"),
    (dict(variant="B", pooling="gap"), r"config.model.pooling: not a field"),
    (dict(variant="B/16"), r"tubevit variants take no '/<patch>'"),
])
def test_from_config_names_a_bad_key_before_building(model, match):
  """Errors come from from_config itself: no module is initialised, nothing is traced or compiled."""
  with pytest.raises(ValueError, match=match):
    tubevit.build_backbone(ml_collections.ConfigDict(dict(model=dict(name="tubevit", **model))))
