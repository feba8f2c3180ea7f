"""Convert an image folder to ArrayRecord shards: ``python -m train.prepare --from DIR --to OUT [--shards N]``.

Writes, per split (train, test), ``N`` shards ``{split}-{k:05d}-of-{N:05d}.array_record`` (the split's examples
in the folder's sorted order, cut into N contiguous runs), a labels file ``{split}-labels.npy`` (int32) and
``manifest.json``: the format, the class names, the source folder, and per split the example count and, per
shard, its file, record count and SHA-256 (``train.data.sources.read_manifest`` checks all of them before a run
reads a shard). The splits are those of ``train.data.read_image_folder``: ``train/`` + ``test/`` (or ``val/``)
sub-folders when present, else a stratified split by ``--test-fraction`` and ``--seed``.

Every image is decoded once here, fully: a file that cannot be decoded stops the conversion with its name (never
skipped), so shards only ever hold decodable images. Records keep the files' encoded bytes (no re-encoding).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

from .data import ops
from .data.sources import MANIFEST, MANIFEST_FORMAT, encode_record, read_image_folder, sha256_file


def write_shards(source, out, *, shards: int = 1, test_fraction: float = 0.25, seed: int = 0,
                 progress: bool = False) -> dict:  # fmt: skip
    """Convert image folder ``source`` into shards in ``out`` (created; must not hold a manifest). Returns the
    manifest. ``shards`` >= 1 per split (fewer if a split has fewer examples). A write that fails (a full disk)
    is one ValueError naming the file, after what this call wrote is removed."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    out = os.fspath(out)
    if os.path.exists(os.path.join(out, MANIFEST)):
        raise ValueError(f"output directory {out} already holds a {MANIFEST}; choose an empty directory")
    folder = read_image_folder(source, test_fraction=test_fraction, seed=seed)
    splits = {"train": (folder.train_files, folder.train_labels), "test": (folder.test_files, folder.test_labels)}
    for files, _ in splits.values():  # decode everything before writing anything
        for file in files:
            with open(file, "rb") as f:
                ops.decode(f.read(), None, channels=3, what=file)
    created = not os.path.exists(out)
    written: list[str] = []  # what this call wrote, removed if a write fails (a full disk)
    try:
        os.makedirs(out, exist_ok=True)
        manifest = _write(out, folder, splits, shards, progress, written)
    except (OSError, RuntimeError) as error:  # array_record reports a failed write as a RuntimeError
        for file in written:
            if os.path.exists(file):
                os.remove(file)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        where = getattr(error, "filename", None) or (written[-1] if written else out)
        removed = f"the directory {out}" if created else f"{len(written)} file(s) in {out}"
        raise ValueError(f"writing shards failed at {where}: {reason}; the partial output was removed "
                         f"({removed})") from None
    return manifest


def _write(out: str, folder, splits: dict, shards: int, progress: bool, written: list[str]) -> dict:
    from array_record.python.array_record_module import ArrayRecordWriter

    manifest = {"format": MANIFEST_FORMAT, "class_names": list(folder.class_names), "source": folder.path,
                "layout": folder.layout, "splits": {}}  # fmt: skip
    for split, (files, labels) in splits.items():
        count = min(shards, len(files))
        bounds = np.linspace(0, len(files), count + 1).round().astype(int)
        entry = {"count": len(files), "shards": []}
        for k in range(count):
            name = f"{split}-{k:05d}-of-{count:05d}.array_record"
            # Choice: group_size:1, one record per chunk: random access reads exactly one record (as grain advises).
            written.append(os.path.join(out, name))
            writer = ArrayRecordWriter(written[-1], "group_size:1")
            for i in range(bounds[k], bounds[k + 1]):
                with open(files[i], "rb") as f:
                    writer.write(encode_record(int(labels[i]), f.read()))
            writer.close()
            entry["shards"].append({"file": name, "count": int(bounds[k + 1] - bounds[k]),
                                    "sha256": sha256_file(os.path.join(out, name))})  # fmt: skip
            if progress:
                print(f"{split}: shard {k + 1}/{count} written", file=sys.stderr)
        labels_name = f"{split}-labels.npy"
        written.append(os.path.join(out, labels_name))
        np.save(written[-1], np.asarray(labels, np.int32), allow_pickle=False)
        entry["labels"] = {"file": labels_name, "sha256": sha256_file(os.path.join(out, labels_name))}
        manifest["splits"][split] = entry
    written.append(os.path.join(out, MANIFEST + ".tmp"))
    with open(written[-1], "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(written[-1], os.path.join(out, MANIFEST))
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, help="the image folder (one sub-folder per class)")
    parser.add_argument("--to", dest="out", required=True, help="the output directory (new or empty)")
    parser.add_argument("--shards", type=int, default=1, help="shards per split (default 1)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="without train/ + test/: the test share")
    parser.add_argument("--seed", type=int, default=0, help="without train/ + test/: the split's seed")
    args = parser.parse_args(argv)
    try:
        manifest = write_shards(args.source, args.out, shards=args.shards, test_fraction=args.test_fraction,
                                seed=args.seed, progress=True)  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    counts = ", ".join(f"{split} {entry['count']}" for split, entry in manifest["splits"].items())
    print(f"{len(manifest['class_names'])} classes; {counts} examples; manifest {os.path.join(args.out, MANIFEST)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
