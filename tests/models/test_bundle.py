"""Bundles: one save / load / verify path for every model kind; bad bundles refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import leukodx
from leukodx.errors import DataNotFoundError, IntegrityError, InvalidInputError, LeukodxError, ModelNotFoundError
from leukodx.inference.classifier import TASK
from leukodx.models.architectures import network_from_card as _build_classifier
from leukodx.models.architectures import create_network
from leukodx.models.bundle import load_network, load_tensors, read_card, resolve_bundle, save_bundle, verify_bundle
from leukodx.models.card import build_card


def _card(**overrides):
    card = build_card("t", TASK, ["a", "b"], data={"dataset": "unit"}, arch="resnet10t",
                      preprocess={"size": 32}, argv=["leukodx", "train", "-d", "unit"])
    return {**card, **overrides}


def _save(path, **overrides):
    return save_bundle(path, create_network("resnet10t", 2), _card(**overrides))


def test_round_trip_keeps_weights_and_records_hash_and_provenance(tmp_path):
    net = create_network("resnet10t", 2)
    card = save_bundle(tmp_path / "m", net, _card())
    assert len(card["sha256"]) == 64 and card["size_bytes"] > 0
    assert card["schema"] == 1 and card["provenance"]["argv"] == "leukodx train -d unit"
    assert torch.__version__.startswith(card["provenance"]["versions"]["torch"])
    loaded, card2, directory = load_network(tmp_path / "m", TASK, _build_classifier)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert card2["sha256"] == card["sha256"] and directory == tmp_path / "m"


def test_numpy_arrays_round_trip_through_the_same_path(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.array([0.5, -1.0])}
    card = build_card("np", "flow-cell-classification", ["healthy", "leukemic"], data={}, markers=["cd45"],
                      transform={"kind": "asinh"}, layers=1, threshold=0.5)
    save_bundle(tmp_path / "f", arrays, card)
    card2, weights = verify_bundle(tmp_path / "f", task="flow-cell-classification")
    back = load_tensors(weights, "np")
    assert np.array_equal(back["w"], arrays["w"]) and np.array_equal(back["b"], arrays["b"])


def test_weights_that_do_not_match_the_card_are_refused(tmp_path):
    _save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors: sha256 .* does not match its card"):
        load_network(tmp_path / "m", TASK, _build_classifier)


def test_garbage_weights_whose_hash_matches_the_card_are_refused(tmp_path):
    from leukodx._hashing import sha256_file

    _save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(b"not a safetensors file at all")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    card["sha256"] = sha256_file(weights)
    (tmp_path / "m" / "card.json").write_text(json.dumps(card))
    with pytest.raises(InvalidInputError, match="model.safetensors: not a readable safetensors file"):
        load_network(tmp_path / "m", TASK, _build_classifier)


def test_card_of_another_task_is_refused_naming_the_folder(tmp_path):
    _save(tmp_path / "m")
    with pytest.raises(InvalidInputError, match=r"m: a image-classification model, not a detection model"):
        verify_bundle(tmp_path / "m", task="detection")
    with pytest.raises(InvalidInputError, match="not a detection model"):
        leukodx.load(tmp_path / "m", task="detection")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("arch"), "card of a image-classification model lacks arch"),
    (lambda c: c.update(task="poetry"), "unknown task 'poetry'"),
    (lambda c: c.update(classes="a,b"), "'classes' must be a list"),
])
def test_malformed_cards_are_refused_with_one_line(tmp_path, edit, message):
    _save(tmp_path / "m")
    path = tmp_path / "m" / "card.json"
    card = json.loads(path.read_text())
    edit(card)
    path.write_text(json.dumps(card))
    with pytest.raises(InvalidInputError, match=message) as info:
        read_card(tmp_path / "m")
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_card_that_is_not_json_or_missing(tmp_path):
    _save(tmp_path / "m")
    (tmp_path / "m" / "card.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="card.json: model card is not valid JSON"):
        read_card(tmp_path / "m")
    (tmp_path / "m" / "card.json").unlink()
    with pytest.raises(DataNotFoundError, match="not a model bundle"):
        resolve_bundle(tmp_path / "m")


def test_a_malformed_card_is_never_written(tmp_path):
    with pytest.raises(InvalidInputError, match="lacks arch"):
        save_bundle(tmp_path / "m", create_network("resnet10t", 2), {k: v for k, v in _card().items() if k != "arch"})
    assert not (tmp_path / "m").exists()


def test_unknown_model_name_lists_the_bundled_ones(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no-such-model: no such model .*pbc-celltype"):
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


def test_pretrained_true_is_refused_at_once():
    with pytest.raises(LeukodxError, match="never does; pass a local .safetensors file"):
        create_network("resnet10t", 2, pretrained=True)


def test_unknown_architecture():
    with pytest.raises(InvalidInputError, match="not known to timm"):
        create_network("resnet-9000", 2)
