"""Fuzzing model bundles: card fields deleted or given values of the wrong type, weight bytes changed
or cut (with the card's sha256 left alone, or made to match the garbage), for each kind of bundle."""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache

from hypothesis import given, strategies as st

from contract import check
from leukodx.models.bundle import resolve_bundle

KINDS = {"image classifier": "all-stage", "flow": "ddpr-leukemic-cell", "expression": "golub-all-aml",
         "patient": "deepapl-apl"}

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


@lru_cache(maxsize=None)
def _source(name: str):
    return resolve_bundle(name)


def _load(kind: str, folder):
    if kind == "image classifier":
        from leukodx.inference.classifier import load_model

        clf = load_model(folder, backend="torch")
        import numpy as np

        return clf.predict(np.full((40, 40, 3), 200, dtype=np.uint8))
    if kind == "flow":
        from leukodx.cytometry.classifier import CellClassifier

        model = CellClassifier.load(folder)
        import numpy as np

        return model.predict_proba(np.zeros((3, len(model.markers))))
    if kind == "expression":
        from leukodx.omics.bundle import ExpressionModel

        model = ExpressionModel.load(folder)
        import numpy as np

        return model.predict_proba(np.full((2, len(model.genes)), 500.0))
    from leukodx.inference.patient import PatientModel

    return PatientModel.load(folder)


def _copy(tmp_path_factory, kind):
    folder = tmp_path_factory.mktemp("bundle") / KINDS[kind]
    src = _source(KINDS[kind])
    folder.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (folder / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy(f, folder / f.name)
    return folder


@given(kind=st.sampled_from(sorted(KINDS)), data=st.data())
def test_card_mutations(tmp_path_factory, kind, data):
    folder = _copy(tmp_path_factory, kind)
    card = json.loads((folder / "card.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        target = card
        path = data.draw(st.lists(st.integers(0, 50), min_size=1, max_size=3))
        for depth, pick in enumerate(path):
            if not isinstance(target, dict) or not target:
                break
            key = sorted(target)[pick % len(target)]
            if depth == len(path) - 1 or not isinstance(target[key], dict):
                if data.draw(st.booleans()):
                    del target[key]
                else:
                    target[key] = data.draw(json_values)
                break
            target = target[key]
    (folder / "card.json").write_text(data.draw(st.sampled_from(["json", "truncated"])) == "json"
                                      and json.dumps(card) or json.dumps(card)[:-7])
    check(f"bundles: card fields ({kind})", _load, kind, folder)


@given(kind=st.sampled_from(sorted(KINDS)), data=st.data(), match_sha=st.booleans())
def test_weight_mutations(tmp_path_factory, kind, data, match_sha):
    folder = _copy(tmp_path_factory, kind)
    card = json.loads((folder / "card.json").read_text())
    weights = folder / card.get("weights", "model.safetensors")
    raw = bytearray(weights.read_bytes())
    weights.unlink()
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        hi = data.draw(st.sampled_from([64, 4096, len(raw)]))  # the JSON header, or anywhere
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, min(hi, len(raw)) - 1))] = data.draw(st.integers(0, 255))
    weights.write_bytes(bytes(raw))
    if match_sha:  # garbage the checksum vouches for: only the loader's own checks stand between
        card["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
        card["size_bytes"] = len(raw)
        (folder / "card.json").write_text(json.dumps(card))
    check(f"bundles: weight bytes ({kind})", _load, kind, folder)
