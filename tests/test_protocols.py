"""Protocol checks: one clear error naming the missing methods, and isinstance for optional roles."""
import pytest

from vlm import protocols


class _Dual:
  model = None

  def dummy_batch(self, batch_size):
    return {}

  def init_variables(self, rng, batch):
    return {}

  def loss_fn(self, params, model_state, batch, rng, *, train):
    return 0.0, ({}, {})

  def embed_video(self, variables, video):
    return video

  def embed_text(self, variables, text, text_mask):
    return text


def test_require_passes_and_names_missing_methods():
  task = _Dual()
  protocols.require(task, protocols.Task, "config.task.name")
  protocols.require(task, protocols.DualEncoder, "evals type 'retrieval'")
  with pytest.raises(TypeError, match=r"evals type 'qa' needs a AnswerScorer; the _Dual of .* lacks: answer_scores"):
    protocols.require(task, protocols.AnswerScorer, "evals type 'qa'")
  with pytest.raises(TypeError, match=r"lacks: encode_text, encode_video, match_scores"):
    protocols.require(task, protocols.CrossEncoder, "rerank")


def test_attributes_and_inherited_protocol_members_count():
  class NoModel(_Dual):
    model = property(lambda self: (_ for _ in ()).throw(AttributeError("model")))
  assert protocols.missing_methods(NoModel(), protocols.Task) == ["model"]

  class Matcher:
    vocab_size = 10
    encode_video = encode_text = fuse = vtm_logits = mlm_logits = lambda *a, **k: None
  assert protocols.missing_methods(Matcher(), protocols.MatchingModel) == []
  assert protocols.missing_methods(Matcher(), protocols.AnswerDecoderModel) == ["answer_logits"]
  assert protocols.missing_methods(object(), protocols.Backbone) == ["__call__"]
  assert protocols.missing_methods(lambda video, train=False: None, protocols.Backbone) == []
