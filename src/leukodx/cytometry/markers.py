"""Marker names across panels: 'CD45', 'cd45', '145Nd_CD45', 'CD45_In115', 'CD45 FITC' are one marker.

Channel labels mix the antigen with the reporter (a metal isotope in mass cytometry, a
fluorochrome in flow) and the detector's area/height suffix. ``canonical_marker`` strips
those and lower-cases the rest, so two files (or a file and a training table) can be joined
on the antigen. Distinct antigens that share a prefix stay distinct ('cd45' vs 'cd45ra').
"""

from __future__ import annotations

import re

from leukodx.errors import InvalidInputError

# isotope tags in either order: 145Nd, Nd145, In115, Y89, Pt195 (element symbols, 1-2 letters)
_ELEMENTS = "La|Ce|Pr|Nd|Sm|Eu|Gd|Tb|Dy|Ho|Er|Tm|Yb|Lu|In|Y|Pt|Ir|Pd|Bi|Cd|I|Rh|Ba|Cs|Os|Au|Hg|Pb|Tl|Te|Sn"
_ISOTOPE = re.compile(rf"^(\d{{2,3}}({_ELEMENTS})|({_ELEMENTS})\d{{2,3}})(Di|Dd)?$")
_NO_ANTIGEN = {"empty", "none", "blank", "unused"}
_FLUOROCHROMES = {
    "fitc", "pe", "apc", "percp", "cy5", "cy5.5", "cy7", "pe-cy5", "pe-cy7", "percp-cy5.5", "apc-cy7", "apc-h7",
    "bv421", "bv510", "bv605", "bv650", "bv711", "bv786", "buv395", "buv737", "pacificblue", "pacific blue",
    "alexa488", "alexa647", "alexa700", "af488", "af647", "af700", "v450", "v500", "krome orange", "ko",
    "pb", "ecd", "pc5", "pc5.5", "pc7", "gfp", "dapi", "7aad", "7-aad",
}
_DETECTOR_SUFFIX = re.compile(r"[-_ ](A|H|W|AREA|HEIGHT|WIDTH)$", re.IGNORECASE)
SYNONYMS = {"hla-dr": "hladr", "hla_dr": "hladr", "cd3e": "cd3", "tdt": "tdt", "mpo": "mpo"}


def canonical_marker(label: str) -> str:
    """The antigen a channel label names, lower-case, reporter and detector suffix removed."""
    text = label.strip()
    if not text:
        return ""
    text = _DETECTOR_SUFFIX.sub("", text)
    tokens = [t for t in re.split(r"[_\s/]+", text) if t]
    kept = []
    for token in tokens:
        if _ISOTOPE.match(token) or token.lower() in _FLUOROCHROMES:
            continue
        kept.append(token.lower())
    if not kept:  # label was only a reporter ('FITC-A', '145Nd'): keep it so the channel has a name
        kept = [t.lower() for t in tokens]
    name = "_".join(kept)
    if name in _NO_ANTIGEN:
        return ""
    name = SYNONYMS.get(name, name)
    # 'HLA-DR', 'TIM-3', 'PU.1' -> 'hladr', 'tim3', 'pu1': punctuation inside one antigen name carries no meaning
    return re.sub(r"[-.]", "", name)


def align_markers(available: list[str], wanted: list[str], source: str = "file") -> tuple[list[int | None], list[str]]:
    """For each wanted marker, the column in ``available`` holding it (None if absent), and the absent ones.

    Both lists are canonicalized. A marker that appears on two channels of ``available`` is
    ambiguous and raises, naming the channels, rather than picking one silently.
    """
    canon = [canonical_marker(a) if a else "" for a in available]
    columns: list[int | None] = []
    missing: list[str] = []
    for marker in wanted:
        key = canonical_marker(marker)
        hits = [i for i, c in enumerate(canon) if c == key]
        if len(hits) > 1:  # area and height of one detector: the area is the conventional measurement
            area = [i for i in hits if re.search(r"[-_ ]A$", available[i].strip())]
            hits = area if len(area) == 1 else hits
        if len(hits) > 1:
            raise InvalidInputError(f"{source}: marker {marker!r} matches several channels "
                                    f"({', '.join(available[i] for i in hits)}); rename one")
        columns.append(hits[0] if hits else None)
        if not hits:
            missing.append(marker)
    return columns, missing
