"""Whole-smear analysis: cell detection, white-cell segmentation, differential counts."""
