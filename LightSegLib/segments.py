"""Named segments: what a model card's labels become in a segmentation, for the ``.seg.nrrd`` writer (io) and the
Slicer module's segmentation nodes alike, so a result reads the same wherever it is opened."""
from __future__ import annotations


def named_segments(labels: list[dict]) -> list[dict]:
    """One record per card label, in label-value order (the segment order users see), in slicerio's spelling:
    ``id``, ``name``, ``color`` (0-1), ``labelValue`` and ``terminology`` (the card's dict, see terminology_string)."""
    return [{"id": f"Segment_{item['value']}",
             "name": item["name"],
             "color": [round(c / 255.0, 6) for c in item["color"]],
             "labelValue": int(item["value"]),
             "terminology": item["terminology"]}
            for item in sorted(labels, key=lambda it: it["value"])]


def terminology_string(terminology: dict) -> str:
    """Slicer's TerminologyEntry tag string from a card's terminology dict, spelled as slicerio spells it (the
    ``.seg.nrrd`` header and the Slicer module both write it; slicerio is not needed inside Slicer)."""
    def code(key):
        return "^".join(terminology.get(key) or ["", "", ""])

    return "~".join([terminology.get("contextName", "Segmentation category and type - DICOM master list"),
                     code("category"), code("type"), code("typeModifier"),
                     terminology.get("anatomicContextName", ""), code("anatomicRegion"), code("anatomicRegionModifier")])
