"""A checkpoint without a trained classifier: refused by name where it would score noise, or, when
allowed, initialised the same in every process."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from tests.tiny import COMMON
from ue.models import load_model


@pytest.fixture(scope="module")
def base_encoder(tmp_path_factory):
    """A bare BertModel checkpoint: an encoder with no classification head."""
    directory = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(**COMMON)).save_pretrained(directory)
    return str(directory)


def test_missing_classifier_weights_are_refused_by_name(base_encoder):
    with pytest.raises(ValueError, match=r"no trained weights for classifier.bias, classifier.weight.*allow_new"):
        load_model(base_encoder, task="sequence_classification", num_labels=2, new_weights="refuse")


def test_allowed_new_weights_are_seeded_identically_in_every_load(base_encoder):
    def classifier(seed):
        model = load_model(base_encoder, task="sequence_classification", num_labels=2, seed=seed)
        return model.classifier.weight.detach().clone()

    torch.manual_seed(123)
    first = classifier(7)
    torch.manual_seed(456)  # the caller's RNG state does not leak in
    assert torch.equal(first, classifier(7))
    assert not torch.equal(first, classifier(8))
