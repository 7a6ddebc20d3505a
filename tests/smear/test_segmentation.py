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
    assert card["training"]["best_step"] in (3, 6)
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
    done, errors = segm.segment_files([tmp_path / "in"], tmp_path / "out", loaded)
    assert done == 1 and len(errors) == 1 and "broken.png" in errors[0]["input"]
    assert (tmp_path / "out" / "cell.mask.png").exists() and (tmp_path / "out" / "areas.csv").exists()
    # tampered weights are refused
    weights = tmp_path / "seg" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IntegrityError):
        segm.load_segmenter(tmp_path / "seg")
    with pytest.raises(ModelNotFoundError):
        segm.load_segmenter(tmp_path / "nothing")
