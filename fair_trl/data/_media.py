"""Decoding helpers for builders whose releases ship pixels the `datasets` Image feature cannot open.

* `dicom_to_uint8`: a DICOM file -> an 8-bit image, the way a viewer shows it: modality LUT (rescale
  slope/intercept), then the first VOI window (Window Center/Width, or a VOI LUT Sequence), then
  MONOCHROME1 inversion so that dense tissue is always bright. Without any VOI data the full range
  is stretched to 0-255.
* `video_frames`: a video file -> sampled RGB frames (the middle one, or evenly spaced ones) via PyAV.
* `downscale`: keep the aspect ratio and bound the longer side.

Failures raise `MediaError` with a short `reason` that builders count in ``summary.skipped``; a
missing pixel-data codec (compressed DICOM without pylibjpeg/gdcm) has its own reason and a message
that names the package to install. Finding and reading the releases' files is `fair_trl.data._release`'s job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MediaError",
    "dicom_to_uint8",
    "downscale",
    "read_dicom_header",
    "sample_indices",
    "video_frames",
    "warn_once",
]

logger = logging.getLogger(__name__)

# Which pydicom plugin decodes which compressed transfer syntax (pydicom 3 decodes RLE natively).
_CODEC_HINTS = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
}
_DEFAULT_CODEC_HINT = "pylibjpeg pylibjpeg-libjpeg"  # JPEG baseline/extended/lossless
_WARNED: set[str] = set()


class MediaError(Exception):
    """A file that could not be decoded; `reason` is the summary key ("unreadable_dicom", ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def warn_once(key: str, message: str) -> None:
    """Log `message` the first time `key` is seen (builders key it by failure kind and build)."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


# --------------------------------------------------------------------------------------------- images


def downscale(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """`pixels` (uint8, H x W or H x W x 3) shrunk so that max(H, W) <= max_side; never enlarged."""
    if max_side is None:
        return pixels
    if max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side!r}")
    height, width = pixels.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return pixels
    from PIL import Image

    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def _first(value: Any) -> float | None:
    """The first number of a DICOM single- or multi-valued attribute (Window Center is often 2-valued)."""
    if value is None:
        return None
    values = [value] if isinstance(value, str | bytes) or not isinstance(value, Iterable) else list(value)
    try:
        number = float(values[0]) if values else math.nan
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _stretch(array: np.ndarray) -> np.ndarray:
    """Min-max to 0-255 (a constant image becomes 0)."""
    array = array.astype(np.float64)
    low, high = float(np.min(array)), float(np.max(array))
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.clip(np.rint((array - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _window(array: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing onto 0-255 (LINEAR, LINEAR_EXACT and SIGMOID)."""
    array = array.astype(np.float64)
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (array - center) / width))
    elif function == "LINEAR_EXACT":
        out = ((array - center) / width + 0.5) * 255.0
    else:
        out = ((array - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _decoder_available(syntax: Any) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):  # a transfer syntax pydicom has no decoder class for
        return False


def _codec_error(ds: Any, path: Path, err: Exception) -> MediaError:
    """missing_codec when no installed plugin can decode the transfer syntax, else unreadable_dicom."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    hint = _CODEC_HINTS.get(str(syntax), _DEFAULT_CODEC_HINT)
    if syntax is not None and getattr(syntax, "is_compressed", False) and not _decoder_available(syntax):
        return MediaError(
            f"missing_codec ({hint})",
            f"{path}: pydicom has no decoder for {syntax.name} pixel data; "
            f"install one with `pip install {hint}` (or python-gdcm)",
        )
    return MediaError("unreadable_dicom", f"{path}: cannot decode pixel data: {err}")


def dicom_to_uint8(path: str | Path, max_side: int | None = None) -> tuple[np.ndarray, Any]:
    """Decode a DICOM file to an 8-bit grayscale (or RGB) array as displayed, plus its dataset header.

    Raises MediaError("unreadable_dicom") for files pydicom cannot parse or that hold no pixels, and
    MediaError("missing_codec (...)") for compressed pixel data without an installed decoder.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as err:
        raise MediaError("unreadable_dicom", f"{path}: not a readable DICOM file: {err}") from err
    if "PixelData" not in ds:
        raise MediaError("unreadable_dicom", f"{path}: DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises RuntimeError/NotImplementedError/ValueError by decoder
        raise _codec_error(ds, path, err) from err

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]  # multi-frame: the first frame stands for the image
    if samples > 1:
        return downscale(_stretch(pixels) if pixels.dtype != np.uint8 else pixels, max_side), ds

    try:
        values = apply_modality_lut(pixels, ds)
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 1:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            image = _window(values, center, width, function)
        elif "VOILUTSequence" in ds:
            image = _stretch(apply_voi_lut(pixels, ds, index=0))
        else:
            image = _stretch(values)
    except Exception as err:  # malformed LUT/window attributes
        raise MediaError("unreadable_dicom", f"{path}: invalid LUT or window attributes: {err}") from err
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        image = 255 - image
    return downscale(image, max_side), ds


def read_dicom_header(path: str | Path) -> Any | None:
    """The DICOM header without pixels, or None when the file cannot be parsed."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # any parse failure just means "no header values"
        return None


# --------------------------------------------------------------------------------------------- videos


def sample_indices(total: int, count: int) -> list[int]:
    """Frame indices to keep: the middle frame for count == 1, else `count` evenly spaced ones."""
    if count < 1:
        raise ValueError(f"frames_per_video must be >= 1, got {count}")
    if total <= 0:
        return []
    if count == 1:
        return [total // 2]
    return sorted({round(x) for x in np.linspace(0, total - 1, num=min(count, total))})


def video_frames(path: str | Path, count: int = 1, max_side: int | None = None) -> list[np.ndarray]:
    """Sampled RGB frames (uint8 H x W x 3) of a video, decoded with PyAV.

    The frame count comes from the container when it records one, otherwise from a first decoding
    pass. Raises MediaError("unreadable_video") when the file cannot be opened or decodes no frame.
    """
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("unreadable_video", f"{path}: no video stream")
            total = int(container.streams.video[0].frames or 0)
        if total <= 0:
            with av.open(str(path)) as container:
                total = sum(1 for _ in container.decode(video=0))
        wanted = sample_indices(total, count)
        frames: dict[int, np.ndarray] = {}
        if wanted:
            with av.open(str(path)) as container:
                last = wanted[-1]
                for index, frame in enumerate(container.decode(video=0)):
                    if index in wanted:
                        frames[index] = frame.to_ndarray(format="rgb24")
                    if index >= last:
                        break
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise MediaError("unreadable_video", f"{path}: cannot decode video: {err}") from err
    if not frames:
        raise MediaError("unreadable_video", f"{path}: no decodable frames")
    # A container that over-reports its frame count keeps the frames that exist.
    return [downscale(frames[i], max_side) for i in wanted if i in frames]
