"""Rebuild sample_data/photos5 from the shared photos5 set (WebP) as JPEG train/valid/test.

Run once by a maintainer; the output is committed. Every 6th image of a class (sorted by name)
goes to valid, the one after it to test, the rest to train.
"""

import csv
import sys
from pathlib import Path

from PIL import Image

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
rows = list(csv.DictReader((src / "ATTRIBUTION.tsv").open(), delimiter="\t"))
out_rows = []
for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
    for i, path in enumerate(sorted(class_dir.iterdir())):
        split = "valid" if i % 6 == 1 else "test" if i % 6 == 2 else "train"
        target = dst / split / class_dir.name / (path.stem + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(target, "JPEG", quality=90)
        row = next(r for r in rows if r["file"] == f"{class_dir.name}/{path.name}")
        out_rows.append({**row, "file": str(target.relative_to(dst)),
                         "changes": "WebP -> JPEG q90"})
with (dst / "ATTRIBUTION.tsv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(out_rows[0]), delimiter="\t")
    writer.writeheader()
    writer.writerows(out_rows)
