"""The leakage audit finds real near-duplicates in all-aria and the split builder keeps them together."""

from __future__ import annotations

import numpy as np

from leukodx.data.leakage import audit, near_duplicate_groups
from leukodx.data.registry import load_dataset
from leukodx.data.splits import make_split


def test_known_duplicate_pair_is_found_and_grouped():
    aria = load_dataset("all-aria")
    groups = near_duplicate_groups(aria)
    a = aria.paths.index("Benign/WBC-Benign-407.jpg")
    b = aria.paths.index("Benign/WBC-Benign-410.jpg")
    assert groups[a] == groups[b]
    assert len(np.unique(groups)) < len(aria)  # some clusters exist


def test_audit_counts_pairs_across_a_naive_split_and_none_across_a_grouped_one():
    aria = load_dataset("all-aria")
    naive = make_split(aria, seed=0)
    naive_report = audit(aria, naive)
    assert naive_report.n_pairs >= 50
    grouped = make_split(aria, seed=0, groups=near_duplicate_groups(aria), group_method="near-duplicates")
    grouped_report = audit(aria, grouped)
    assert grouped_report.n_pairs == naive_report.n_pairs
    assert sum(grouped_report.cross_split.values()) == 0
    assert sum(naive_report.cross_split.values()) > 0
    ex = naive_report.examples[0]
    assert ex["side_a"] != ex["side_b"] and ex["hamming"] <= 6
