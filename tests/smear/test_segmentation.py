import json

import numpy as np
import pytest
from PIL import Image

from leukodx.errors import IntegrityError, InvalidInputError, ModelNotFoundError
from leukodx.smear import segmentation as segm


def test_mask_grey_levels_map_to_structures():
    grey = np.array([[0, 128], [255, 30]], np.uint8)
    assert segm.mask_labels(grey).tolist() == [[0, 1], [2, 0]]


def test_saved_split_is_disjoint_stable_and_refuses_a_changed_set(tmp_path):
    items = segm.wbc_seg_items("wbc-seg-2")
    path = tmp_path / "split.json"
    first = segm.segmentation_split(items, path=path)
    again = segm.segmentation_split(items, seed=99, path=path)  # read back, not remade
    assert first == again
    ids = sum(first.values(), [])
    assert len(ids) == len(set(ids)) == len(items) == 100
    assert len(first["test"]) == 15
    with pytest.raises(InvalidInputError, match="no longer matches"):
        segm.segmentation_split(items[:-1], path=path)


def test_bundled_split_file_covers_both_sets():
    saved = json.loads(segm.SPLIT_FILE.read_text())
    assert set(saved) == {"Dataset-1", "Dataset-2"}


@pytest.mark.slow
def test_tiny_segmenter_trains_saves_loads_and_segments(tmp_path):
    parts = segm.split_items("wbc-seg-1")
    seg, card = segm.train_segmenter(parts["train"][:16], parts["val"][:6],
                                     training=segm.SegmenterTraining(steps=6, eval_every=3, batch_size=4))
    history = card["training"]["history"]
    assert [h["step"] for h in history] == [3, 6]
    best = max(history, key=lambda h: h["val_nucleus_dice"])  # first of equals wins, as in the engine
    assert card["training"]["best_step"] == best["step"]
    saved = segm.save_segmenter(tmp_path / "seg", seg, card)
    loaded = segm.load_segmenter(tmp_path / "seg")
    assert loaded.card["sha256"] == saved["sha256"]
    images, labels = segm.load_pairs(parts["test"][:3])
    masks = loaded.predict(images)
    assert [m.shape for m in masks] == [im.shape[:2] for im in images]
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) <= {0, 1, 2}
    # a batch with a corrupt file: the good images are segmented, the bad one reported
    (tmp_path / "in").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "in" / "cell.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    done, errors, shift = segm.segment_files([tmp_path / "in"], tmp_path / "out", loaded)
    assert done == 1 and len(errors) == 1 and "broken.png" in errors[0]["input"]
    assert shift["flagged"] is None and "unavailable" in shift["reason"]  # saved without reliability statistics
    assert (tmp_path / "out" / "cell.mask.png").exists() and (tmp_path / "out" / "areas.csv").exists()
    # tampered weights are refused
    weights = tmp_path / "seg" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IntegrityError):
        segm.load_segmenter(tmp_path / "seg")
    with pytest.raises(ModelNotFoundError):
        segm.load_segmenter(tmp_path / "nothing")


@pytest.mark.slow
def test_segmenter_training_resumes_where_it_stopped(tmp_path):
    """The engine's checkpoint: stopping after the first round and resuming gives the straight run."""
    from leukodx.training import engine as engine_mod

    parts = segm.split_items("wbc-seg-1")
    train, val = parts["train"][:8], parts["val"][:4]
    training = segm.SegmenterTraining(steps=4, eval_every=2, batch_size=4)

    class Stop(Exception):
        pass

    original = engine_mod.Engine._emit

    def stop_after_first(self, hook, *args):
        original(self, hook, *args)
        if hook == "on_round_end" and args[0]["round"] == 0:
            raise Stop

    engine_mod.Engine._emit = stop_after_first
    try:
        with pytest.raises(Stop):
            segm.train_segmenter(train, val, training=training, workdir=tmp_path / "a")
    finally:
        engine_mod.Engine._emit = original
    _, resumed = segm.train_segmenter(train, val, training=training, workdir=tmp_path / "a", resume=True)
    _, straight = segm.train_segmenter(train, val, training=training, workdir=tmp_path / "b")
    a, b = resumed["training"]["history"], straight["training"]["history"]
    assert [h["step"] for h in a] == [2, 4]
    assert [h["train_loss"] for h in a] == pytest.approx([h["train_loss"] for h in b], rel=1e-5)
    with pytest.raises(ValueError, match="cannot resume with a different configuration"):
        segm.train_segmenter(train, val, training=segm.SegmenterTraining(steps=6, eval_every=2, batch_size=4),
                             workdir=tmp_path / "a", resume=True)


def test_bundled_segmenter_flags_images_from_another_lab(tmp_path):
    """wbc-seg-unet was trained on wbc-seg-1: its own test images pass, wbc-seg-2's (another scanner) are
    flagged one by one, and a batch of them gets a shift verdict."""
    seg = segm.load_segmenter()
    own, _ = segm.load_pairs(segm.split_items("wbc-seg-1")["test"][:30])
    other, _ = segm.load_pairs(segm.split_items("wbc-seg-2")["test"][:15])
    rel = seg.reliability
    assert np.mean(rel.is_ood(rel.ood_scores(seg.predict_with_features(own)[1]))) <= 0.15
    assert np.mean(rel.is_ood(rel.ood_scores(seg.predict_with_features(other)[1]))) >= 0.8
    (tmp_path / "in").mkdir()
    for i, im in enumerate(other[:6]):
        Image.fromarray(im).save(tmp_path / "in" / f"c{i}.png")
    done, errors, shift = segm.segment_files([tmp_path / "in"], tmp_path / "out", seg)
    assert done == 6 and not errors and shift["flagged"] is True
    header = (tmp_path / "out" / "areas.csv").read_text().splitlines()[0]
    assert header.endswith("ood_score,ood")
