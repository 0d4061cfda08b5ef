"""`realnet predict`: score single images or folders with a finished run."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realnet.data.io import read_image, resize_image
from realnet.data.layouts import IMAGE_EXTENSIONS
from realnet.engine.checkpoint import atomic_write, temporary_target
from realnet.engine.evaluate import load_run
from realnet.engine.runtime import resolve_device, to_tensor
from realnet.errors import BadFileError, RealnetError
from realnet.files import cut_to_bytes, missing_folders, remove_created_folders

MAP_SIZES = ("input", "run")
MAPS_MANIFEST = ".realnet-maps.json"  # in a --save-maps folder: the names of the maps predict writes there


def expand_inputs(paths: list[str], maps_dir: Path | None = None,
                  unlistable: list[OSError] | None = None) -> Iterator[Path]:
    """Folders become their image files (`_images_below`), leaving out `maps_dir` where it lies inside
    the folder (a rerun would score its own maps); anything else is passed on as given, for the
    reader to name if it cannot be read (os.path.isdir, unlike Path.is_dir, is False for a name the
    file system refuses to look up, rather than an error that would end the run). The errors of
    folders that cannot be listed go to `unlistable`, so that their images are not missed in silence."""
    for name in paths:
        path = Path(name)
        if os.path.isdir(path):
            yield from sorted(_images_below(path, _parts_inside(maps_dir, path), unlistable))
        else:
            yield path


def _images_below(root: Path, skipped: tuple[str, ...], unlistable: list[OSError] | None = None) -> Iterator[Path]:
    """Image files below `root`, hidden ones and those in hidden folders (.ipynb_checkpoints), at
    `skipped` or listed as maps by an earlier predict (in the folder's MAPS_MANIFEST; the parts
    beside them are inputs) left out. Linked folders are entered (rglob leaves a linked camera
    folder out), each real folder once (a link back up would loop). Broken links are kept for the
    reader to name; one without a suffix, most likely a folder's, goes to `unlistable`."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True,
                                       onerror=None if unlistable is None else unlistable.append):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).relative_to(root).parts != skipped)
        maps = _listed_maps(here)  # an earlier predict's maps are no inputs
        for name in (f for f in files if not f.startswith(".") and f not in maps):
            path = here / name
            broken_link = path.is_symlink() and not path.exists()  # e.g. a camera share that is not mounted
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and (path.is_file() or broken_link):
                yield path
            elif broken_link and not Path(name).suffix and unlistable is not None:
                unlistable.append(FileNotFoundError(errno.ENOENT, "broken symbolic link", str(path)))


def _listed_maps(folder: Path) -> frozenset[str]:
    """The file names an earlier predict's manifest in `folder` lists (none where it has none, or
    one that cannot be read: its images are then scored, never silently dropped)."""
    try:
        return frozenset(json.loads((folder / MAPS_MANIFEST).read_text(encoding="utf-8"))["maps"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return frozenset()


def _parts_inside(folder: Path | None, root: Path) -> tuple[str, ...]:
    """`folder`'s path below `root`, () if it is not strictly inside it."""
    if folder is None:
        return ()
    try:
        return Path(folder).resolve().relative_to(root.resolve()).parts
    except ValueError:
        return ()


@dataclass
class _Loaded:
    position: int
    path: Path
    image: np.ndarray | None = None  # as read, (H, W, 3) uint8
    error: BadFileError | None = None


def _load(position: int, path: Path) -> _Loaded:
    """One image or the error naming it; a MemoryError too is this file's (a huge 16-bit image goes
    through float64), not the end of the run."""
    try:
        return _Loaded(position, path, image=read_image(path))
    except BadFileError as error:
        return _Loaded(position, path, error=error)
    except MemoryError:
        return _Loaded(position, path, error=BadFileError(path, "not enough memory to read it"))


def _chunks(paths: list[Path], size: int) -> Iterator[list[tuple[int, Path]]]:
    numbered = list(enumerate(paths))
    for start in range(0, len(numbered), size):
        yield numbered[start:start + size]


def _read_ahead(paths: list[Path], batch_size: int) -> Iterator[list[_Loaded]]:
    """Batches of read images, the next one decoded on a thread while the caller scores this one."""
    reader = ThreadPoolExecutor(max_workers=1)
    try:
        pending = None
        for chunk in _chunks(paths, batch_size):
            upcoming = reader.submit(lambda c: [_load(i, p) for i, p in c], chunk)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()
    finally:  # Ctrl-C or a closed pipe: do not read batches nobody will score
        reader.shutdown(wait=True, cancel_futures=True)


_STEM_BYTES = 200  # of a file name's 255: room for the position, "_overlay.png" and atomic_write's temporary name


def _map_stem(position: int, path: Path) -> str:
    """`<position>_<stem>`, the stem cut to _STEM_BYTES so that an input named near the file system's
    limit still gets its map (the position keeps cut names apart)."""
    return f"{position:05d}_{cut_to_bytes(path.stem, _STEM_BYTES)}"


def _earlier_maps(folder: Path, overwrite: bool) -> set[Path]:
    """Refuse a --save-maps folder that holds anything, so that it never mixes two predicts' maps;
    with `overwrite`, the maps and overlays an earlier predict listed in its manifest (a killed one's
    half-written ones too), which `_claim_map_names` deletes once nothing is refused. Every other
    file is left, however it is named."""
    if not folder.is_dir():
        return set()
    entries = list(folder.iterdir())
    if entries and not overwrite:
        raise RealnetError(f"--save-maps {folder} is not empty; choose a new or empty folder, or add --overwrite "
                           "to replace the maps in it")
    manifest = folder / MAPS_MANIFEST
    if not manifest.is_file():
        return set()
    try:
        written = set(json.loads(manifest.read_text(encoding="utf-8"))["maps"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise RealnetError(f"{manifest}: not a list of maps an earlier predict wrote ({type(error).__name__}); "
                           "delete it, or choose another folder") from None
    return {entry for entry in entries if (temporary_target(entry.name) or entry.name) in written and entry.is_file()}


def _claim_map_names(folder: Path, names: list[str], earlier: set[Path]) -> None:
    """Record the names this predict will write before it writes any, so that a later --overwrite
    deletes them even if this one is killed; a file already there under one of them is a user's,
    unless an earlier predict listed it. The earlier maps are deleted only once nothing is refused."""
    replaced = {path.name for path in earlier}
    taken = next((name for name in names if (folder / name).exists() and name not in replaced), None)
    if taken is not None:
        raise RealnetError(f"--save-maps {folder}: {taken} is not a map an earlier predict wrote; move it, or "
                           "choose another folder")
    for path in earlier:
        path.unlink(missing_ok=True)
    atomic_write(folder / MAPS_MANIFEST,
                 lambda tmp: Path(tmp).write_text(json.dumps({"maps": names}), encoding="utf-8"))


def _save_png(path: Path, pixels: np.ndarray) -> Path:
    """Written whole or not at all: a killed predict leaves no truncated PNG for a later reader."""
    from PIL import Image

    # compress_level 1: the same pixels, ~5x faster to write than the default 6, files ~17 % larger
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1))
    return path


def predict(run_dir: Path, inputs: list[str], *, save_maps: Path | None = None, map_size: str | None = None,
            overlays: bool = False, overwrite: bool = False, batch_size: int = 8, device: str = "auto",
            threshold: float | None = None, out=None, err=None) -> int:
    """Prints one JSON line per image, in input order; returns the number of images that failed
    (and of folders that held none beside inputs that did, or could not be listed).
    Maps (and with `overlays`, the heatmap over the image) are saved as `<position>_<stem>.png` (a long stem cut)
    (`..._overlay.png`), so inputs that share a file name never overwrite each other. `map_size`
    'input' saves them at each input's own size, 'run' at the run's square image size. A maps folder
    that holds files is refused, unless `overwrite` (`_earlier_maps`). `threshold` replaces the run's
    for is_anomalous (an operating point chosen on the line); heatmaps keep the run's scale."""
    import torch

    from realnet.report.panels import heatmap_overlay, map_at_input_size, map_display_max, map_to_uint8

    if map_size is not None and save_maps is None:
        raise RealnetError(f"--map-size {map_size} needs --save-maps DIR (it sizes the saved maps)")
    map_size = map_size or "input"
    if map_size not in MAP_SIZES:
        raise RealnetError(f"--map-size {map_size}: choose one of {', '.join(MAP_SIZES)}")
    if batch_size < 1:  # the CLI refuses it too; a Python caller got a silent empty run (or a range() traceback)
        raise RealnetError(f"batch size {batch_size}: must be >= 1")
    if overlays and save_maps is None:
        raise RealnetError("--overlays needs --save-maps DIR to write them into")
    if overwrite and save_maps is None:
        raise RealnetError("--overwrite needs --save-maps DIR to replace the maps in")
    if threshold is not None and not math.isfinite(threshold):
        raise RealnetError(f"--threshold {threshold}: must be a finite number")
    out, err = out or sys.stdout, err or sys.stderr
    torch_device = resolve_device(device)
    model, meta = load_run(Path(run_dir), torch_device)
    size = meta["config"]["train"]["image_size"]
    threshold = meta["threshold"] if threshold is None else float(threshold)
    display_max = map_display_max(meta)
    # before the inputs are listed: DIR may be an input folder, whose earlier maps are no inputs
    earlier = _earlier_maps(Path(save_maps), overwrite) if save_maps is not None else set()
    earlier_resolved = {path.resolve() for path in earlier}
    failures = 0
    paths, empty, unlistable = [], [], []
    for name in inputs:
        listed_before = len(unlistable)
        found = [path for path in expand_inputs([name], save_maps, unlistable)
                 if not earlier_resolved or path.resolve() not in earlier_resolved]
        paths += found
        if not found and len(unlistable) == listed_before:  # only a folder expands to nothing
            empty.append(name)
    unlistable_lines = [f"{error.filename}: cannot list this folder ({error.strerror or error}); its images were "
                        "not scored" for error in unlistable]
    if not paths:
        if unlistable_lines:
            raise RealnetError(unlistable_lines[0])
        raise RealnetError(f"no image files in {', '.join(str(i) for i in inputs)} (pass image files or folders "
                           "holding them)")
    created = []
    if save_maps is not None:
        save_maps = Path(save_maps)
        created = missing_folders(save_maps)
        try:
            save_maps.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RealnetError(f"--save-maps {save_maps}: cannot create the folder ({error.strerror})") from None
        stems = [_map_stem(position, path) for position, path in enumerate(paths)]
        claimed = [f"{stem}{suffix}.png" for stem in stems for suffix in ("", "_overlay")[:2 if overlays else 1]]
        _claim_map_names(save_maps, claimed, earlier)
    for name in empty:  # a mistyped folder beside good ones is named, not skipped in silence
        print(f"realnet: error: {name}: no image files in this folder", file=err)
    for line in unlistable_lines:
        print(f"realnet: error: {line}", file=err)
    try:
        for batch in _read_ahead(paths, batch_size):
            readable = [item for item in batch if item.error is None]
            if readable:
                stacked = np.stack([resize_image(item.image, size) for item in readable])
                with torch.no_grad():
                    maps, scores = model.predict(to_tensor(stacked, torch_device))
                maps, scores = maps.float().cpu().numpy(), scores.float().cpu().numpy()
            results = iter(range(len(readable)))
            for item in batch:
                if item.error is not None:
                    print(f"realnet: error: {item.error}", file=err)
                    failures += 1
                    continue
                index = next(results)
                score = float(scores[index])
                if not np.isfinite(score):  # NaN > threshold is False: the part would pass as normal
                    print(f"realnet: error: {item.path}: the detector's score for it is not finite ({score}); "
                          "it was not scored", file=err)
                    failures += 1
                    continue
                result = {"path": str(item.path), "score": score, "is_anomalous": score > threshold,
                          "threshold": threshold}  # exact: the values compared
                if save_maps is not None:
                    anomaly_map = maps[index]
                    if map_size == "input":
                        anomaly_map = map_at_input_size(anomaly_map, item.image.shape[:2])
                    stem = stems[item.position]
                    result["map"] = str(_save_png(save_maps / f"{stem}.png", map_to_uint8(anomaly_map, display_max)))
                    if overlays:
                        shown = item.image if map_size == "input" else resize_image(item.image, size)
                        result["overlay"] = str(_save_png(save_maps / f"{stem}_overlay.png",
                                                          heatmap_overlay(shown, anomaly_map, display_max=display_max)))
                print(json.dumps(result), file=out, flush=True)
    finally:
        if save_maps is not None and not any((save_maps / name).exists() for name in claimed):
            _release_maps_folder(save_maps, created)  # no map came: leave no trace
    return failures + len(empty) + len(unlistable)


def _release_maps_folder(folder: Path, created: list[Path]) -> None:
    """Remove the manifest of a predict that wrote no map, and the folders it created for them."""
    (folder / MAPS_MANIFEST).unlink(missing_ok=True)
    remove_created_folders(created)
