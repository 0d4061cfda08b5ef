"""Run folders and checkpoints.

A finished run holds `model.safetensors` (every tensor of the detector except the backbone's)
and `model.json` (config, backbone identity and sha256, threshold, package version, fit
summary). The backbone's weights are never stored: they are re-created from their identity and
checked against the recorded hash. While fitting, `resume.pt` holds the optimiser state so a
killed run can continue; it is written by us and read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path, PurePath
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from realnet import __version__
from realnet.errors import BadFileError, RealnetError
from realnet.files import USER_UMASK, cut_to_bytes, missing_folders, openable_file, remove_created_folders

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
RESUME_STATE = "resume.pt"
FORMAT_VERSION = 1
RESUME_KEYS = ("model", "optimizer", "step", "selection", "elapsed_s")  # what every resume.pt holds
_TEMPORARY_NAME_BYTES = 240  # of a temporary's 255: ".", the target's name, and mkstemp's "." + 8 + ".tmp"


def write_beside(path: Path, write) -> Path:
    """Call `write(tmp_path)` on a new temporary file beside `path` and return it complete, for the
    caller to move into place (os.replace) or delete; deleted here if writing fails. A folder that
    cannot be written to is named in the error, not the temporary file's name; folders made for it
    are removed again. The temporary's name holds the target's (`temporary_target`), cut to leave
    room for mkstemp's part where the target's own name is near the 255-byte limit."""
    tmp = None
    created = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{cut_to_bytes(path.name, _TEMPORARY_NAME_BYTES)}.",
                                   suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~USER_UMASK)  # mkstemp creates 0600; give the file the user's usual mode
        return Path(tmp)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        remove_created_folders(created)
        if isinstance(error, OSError):
            raise RealnetError(f"{path}: cannot write there ({error.strerror or error})") from None
        if isinstance(error, SafetensorError):  # safetensors reports a full disk as its own error type
            raise RealnetError(f"{path}: cannot write there ({str(error).splitlines()[0]})") from None
        raise


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` then move the result into place, so readers never see a half file."""
    tmp = write_beside(path, write)
    try:
        os.replace(tmp, path)
    except OSError as error:
        raise RealnetError(f"{path}: cannot write there ({error.strerror or error})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def temporary_target(name: str) -> str | None:
    """The file name that `name`, a temporary `atomic_write` made (".<target>.<random>.tmp"; mkstemp's
    random part has no dot), was to become; None for any other name."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    target, dot, _random = name[1:-len(".tmp")].rpartition(".")
    return target if dot and target else None


def is_temporary_of(name: str, targets: tuple[str, ...]) -> bool:
    """Whether `name` is the temporary file `atomic_write` makes for one of `targets`."""
    return temporary_target(name) in targets


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the half-written files `atomic_write` leaves when its process is killed mid-write
    (hundreds of MB for a resume state of the paper preset)."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _json_default(value: Any) -> str:
    if isinstance(value, PurePath):  # folder options and other paths in run metadata
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_text(payload: Any) -> str:
    return json.dumps(payload, indent=2, default=_json_default) + "\n"


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json_text(payload)))


def detector_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the detector but the backbone's, contiguous and on the CPU."""
    return {
        key: value.detach().cpu().contiguous()
        for key, value in model.state_dict().items()
        if not key.startswith("backbone.")
    }


def save_model(run_dir: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    meta = {"format_version": FORMAT_VERSION, "realnet_version": __version__, **meta}
    atomic_write(run_dir / MODEL_WEIGHTS, lambda tmp: save_file(detector_state(model), str(tmp)))
    write_json(run_dir / MODEL_META, meta)


def read_json(path: Path, missing: str) -> dict[str, Any]:
    """A JSON metadata file, with one-line errors: `missing` when it does not exist."""
    if not path.is_file():
        raise RealnetError(missing)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BadFileError(path, f"unreadable metadata ({error})") from None
    if not isinstance(payload, dict):
        raise BadFileError(path, f"malformed metadata (a JSON {type(payload).__name__}, not an object)")
    return payload


# what test, predict, export and fit --resume read from a run's model.json, and of which type
_META_FIELDS = {"config": dict, "backbone": dict, "data": dict, "fit": dict, "protocol": str, "preset": str}
_META_SUBFIELDS = {("backbone", "name"): str, ("backbone", "sha256"): str, ("data", "root"): str,
                   ("data", "category"): str, ("data", "dataset"): str, ("config", "train"): dict}


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MODEL_META
    meta = read_json(path, f"{run_dir} is not a finished realnet run ({MODEL_META} not found)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BadFileError(path, f"unsupported checkpoint format {meta.get('format_version')}")
    wrong = [key for key, kind in _META_FIELDS.items() if not isinstance(meta.get(key), kind)]
    wrong += [f"{section}.{key}" for (section, key), kind in _META_SUBFIELDS.items()
              if section not in wrong and not isinstance(meta[section].get(key), kind)]
    if "config" not in wrong and "config.train" not in wrong:
        # the size every reader resizes to; a config default would score at another size than was fitted
        image_size = meta["config"]["train"].get("image_size")
        if isinstance(image_size, bool) or not isinstance(image_size, int):
            wrong.append("config.train.image_size")
    threshold = meta.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        wrong.append("threshold")
    if wrong:
        raise BadFileError(path, f"malformed run metadata ({', '.join(wrong)} missing or of the wrong type); "
                                 "it was edited or damaged: fit the run again")
    return meta


def load_detector_state(run_dir: Path, model: torch.nn.Module) -> None:
    path = Path(run_dir) / MODEL_WEIGHTS
    if not path.is_file():
        raise RealnetError(f"{path} not found")
    try:
        state = load_file(openable_file(path))
    except Exception as error:  # safetensors raises its own error type for truncated or corrupt files
        raise BadFileError(path, f"unreadable weights ({error})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # torch's message spans a line per tensor of another shape
        # compared after the attempt, not before: a memory bank takes its length from the file
        loaded = model.state_dict()
        resized = [k for k, tensor in state.items() if k in loaded and tensor.shape != loaded[k].shape]
        if not resized:
            raise
        shapes = ", ".join(f"'{k}' {tuple(state[k].shape)} vs {tuple(loaded[k].shape)}" for k in resized[:3])
        raise RealnetError(f"{path}: does not match the model that {MODEL_META} describes, {len(resized)} tensors "
                           f"have other shapes (file vs model: {shapes})") from None
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise RealnetError(f"{path}: does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    broken = [k for k, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:  # every score would be NaN, which predict's threshold passes as normal
        raise RealnetError(f"{path}: {len(broken)} tensors hold NaN or infinite values ('{broken[0]}' first): the "
                           "weights are broken, e.g. by a diverged fit; fit the run again")


def unreadable_resume_state(path: Path, remedy: str) -> BadFileError:
    """The error for a resume state that cannot be read back, with `remedy` (what to do). The
    reader's own message is left out: PyTorch's spans lines and suggests loading with
    weights_only=False, and none of them says more than that the file is damaged or foreign."""
    return BadFileError(path, f"unreadable resume state (damaged, or not written by realnet); {remedy}")


def save_resume_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(run_dir / RESUME_STATE, lambda tmp: torch.save(state, tmp))


def load_resume_state(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RESUME_STATE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        state = None
    if not isinstance(state, dict) or not all(key in state for key in RESUME_KEYS):
        # a plain `fit` refuses a folder that holds resume.pt, so the file itself must go
        raise unreadable_resume_state(path, "delete it to start the run again, or choose another --out")
    return state
