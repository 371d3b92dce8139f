"""Benchmarks in the training sets' own layout, read by `data.preference_files` (its field maps,
image handling and bad-record reasons), as benchmark items."""

from __future__ import annotations

from grlhfv_jax.data import preference_files as pf
from grlhfv_jax.data.benchmarks import common


def read(path, fieldmap: pf.FieldMap, *, fmt, limit, image_root, problems, labels, category=None):
    """Items of a preference file: `labels` maps a label name to the metadata column holding it
    (None: the field map's label); `category`: the metadata column of the item's category."""
    if image_root:
        problems.log(
            f"[{problems.benchmark}] image_root is not used for this layout (paths are relative to the "
            "files, as data.preference_files reads them)"
        )
    recs, bad = pf.iter_preferences(
        path, fieldmap, format=fmt if fmt != "json" else "jsonl", on_bad="skip", limit=limit, check_images=True
    )
    values = [str(v) for v in fieldmap.label_values]
    items = []
    for r in recs:
        lab = {}
        for name, col in labels.items():
            if col is None:
                lab[name] = int(r["overall_response"])
            else:
                v = str(r["meta"].get(col)).strip()
                if v not in values:
                    problems.add(r["id"], "bad_label", f"{col!r} = {r['meta'].get(col)!r}")
                    lab = None
                    break
                lab[name] = values.index(v) + 1
        if lab is None:
            continue
        cat = common.text(r["meta"].get(category)) if category else ""
        items.append(
            common.Item(r["id"], r["question"], r["image"], (r["response_1"], r["response_2"]), lab, category=cat)
        )
    problems.read += bad.read
    for row_id, reason, detail in bad.examples:  # the reader names its first 20; the rest are counted
        problems.add(row_id, reason, detail)
    for reason, n in bad.counts.items():
        problems.counts[reason] += n - sum(1 for _, r, _ in bad.examples if r == reason)
    return items


def fieldmap(base: pf.FieldMap, fields: dict) -> pf.FieldMap:
    """`base` with the config's column overrides (our field -> column; `label_values` a list)."""
    kw = {
        k: (tuple(v) if k in ("label_values", "meta") else v)
        for k, v in fields.items()
        if k in {f.name for f in pf.dataclasses.fields(pf.FieldMap)}
    }
    return pf.dataclasses.replace(base, **kw)
