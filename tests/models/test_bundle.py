"""Bundles: safetensors + card, sha256 enforced, pretrained weights only from explicit local files."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from leukodx.errors import DataNotFoundError, IntegrityError, InvalidInputError, LeukodxError, ModelNotFoundError
from leukodx.models.architectures import create_network
from leukodx.models.bundle import load_bundle, read_card, resolve_bundle, save_bundle


def _card():
    return {"name": "t", "arch": "resnet10t", "classes": ["a", "b"], "preprocess": {"size": 32}}


def test_round_trip_keeps_weights_and_records_hash(tmp_path):
    net = create_network("resnet10t", 2)
    card = save_bundle(tmp_path / "m", net, _card())
    assert len(card["sha256"]) == 64 and card["size_bytes"] > 0
    loaded, card2 = load_bundle(tmp_path / "m")
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert card2["sha256"] == card["sha256"]


def test_weights_that_do_not_match_the_card_are_refused(tmp_path):
    save_bundle(tmp_path / "m", create_network("resnet10t", 2), _card())
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors: sha256 .* does not match its card"):
        load_bundle(tmp_path / "m")


def test_unknown_model_name_lists_the_bundled_ones(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no-such-model: no such model"):
        resolve_bundle("no-such-model")
    with pytest.raises(DataNotFoundError, match="card missing"):
        read_card(tmp_path)


def test_pretrained_from_a_local_safetensors_file(tmp_path):
    source = create_network("resnet10t", 5)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "backbone.safetensors"))
    net = create_network("resnet10t", 2, pretrained=tmp_path / "backbone.safetensors")
    assert torch.equal(net.conv1[0].weight, source.conv1[0].weight)  # backbone loaded
    assert net.fc.weight.shape[0] == 2  # differently sized head left fresh


def test_pretrained_refuses_pickles_and_missing_files(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"\x80\x04")
    with pytest.raises(InvalidInputError, match="only .safetensors"):
        create_network("resnet10t", 2, pretrained=tmp_path / "w.pth")
    with pytest.raises(DataNotFoundError, match="not found"):
        create_network("resnet10t", 2, pretrained=tmp_path / "none.safetensors")


def test_pretrained_true_without_a_hub_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LeukodxError, match="could not download pretrained weights"):
        create_network("resnet10t", 2, pretrained=True)


def test_unknown_architecture():
    with pytest.raises(InvalidInputError, match="not known to timm"):
        create_network("resnet-9000", 2)
