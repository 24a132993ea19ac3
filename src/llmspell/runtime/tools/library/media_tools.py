"""Media tools confined to one directory: images (Pillow), WAV audio (stdlib) and video
(the external ``ffprobe`` / ``ffmpeg`` programs).

Why hand-written: the point is the confinement and the limits. Every input and output
path is resolved with :func:`resolve_in_root` (absolute paths, ``..`` and symlink escapes
are refused); inputs are refused above a byte limit before they are read; images are
refused above a pixel limit after reading only their header (a decompression-bomb guard);
outputs are written to a temporary file next to the destination and moved into place, and
an existing file is replaced only with ``overwrite=true``.

Pillow is the optional ``media`` extra and imported on first use. Audio uses only the
``wave`` and ``array`` modules (``audioop`` is deprecated). Video runs ``ffprobe`` and
``ffmpeg`` as argument lists (never through a shell) with a timeout.
"""

from __future__ import annotations

import array
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from llmspell.core.errors import ConfigurationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool
from llmspell.runtime.tools.library.file_search import check_root, resolve_in_root

__all__ = ["AudioProcessorTool", "ImageProcessorTool", "VideoProcessorTool"]

MIB: Final = 1024 * 1024
_PATH: Final = {"type": "string", "minLength": 1, "maxLength": 4096}
_MAX_EXIF_ENTRIES: Final = 100
_MAX_EXIF_VALUE: Final = 200
_MAX_PROBE_OUTPUT: Final = 4 * MIB


# -- shared helpers ----------------------------------------------------------------------


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() or "."


def _input(root: Path, raw: str, tool: str, max_bytes: int | None) -> Path:
    """The existing regular file ``raw`` under ``root``, checked against ``max_bytes``."""
    path = resolve_in_root(root, raw, tool)
    if not path.is_file():
        raise ToolExecutionError(tool, f"{raw!r} does not exist or is not a file",
                                 hint="paths are relative to the sandbox root")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ToolExecutionError(tool, f"{raw!r} is {size} bytes, more than the limit of "
                                 f"{max_bytes}", hint="raise max_bytes or use a smaller file")
    return path


def _output(root: Path, raw: str, tool: str, overwrite: bool) -> Path:
    """The destination ``raw`` under ``root``: not a directory, not existing unless
    ``overwrite``, in an existing directory."""
    target = resolve_in_root(root, raw, tool)
    if target == root or target.is_dir():
        raise ToolExecutionError(tool, f"the output {raw!r} is a directory",
                                 hint="name a file, e.g. 'out/result.png'")
    if target.exists() and not overwrite:
        raise ToolExecutionError(tool, f"the output {raw!r} exists",
                                 hint="pass overwrite=true to replace it")
    if not target.parent.is_dir():
        raise ToolExecutionError(tool, f"the directory of {raw!r} does not exist",
                                 hint="create it first")
    return target


def _write_atomic(target: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` with a temporary file next to ``target``, then move it into place."""
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


# -- images ------------------------------------------------------------------------------

_IMAGE_NAME: Final = "image_processor"
IMAGE_FORMATS: Final = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP",
                        "gif": "GIF", "bmp": "BMP"}
"""Output formats by name (and file extension) -> Pillow's format name."""
INPUT_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""The formats Pillow may open: no plugin that runs external programs (EPS runs
Ghostscript) or parses rarely used formats."""
_MAX_SIDE: Final = 20_000


def _pillow() -> tuple[Any, Any]:
    """Pillow's ``Image`` and ``ExifTags`` modules, or a :class:`ConfigurationError`."""
    try:
        image = importlib.import_module("PIL.Image")
        exif_tags = importlib.import_module("PIL.ExifTags")
    except ImportError:
        raise ConfigurationError("the image_processor tool needs Pillow, which is not "
                                 "installed", hint="pip install 'llmspell[media]'") from None
    return image, exif_tags


def _exif_value(value: Any) -> str:
    """An EXIF value as a short, JSON-safe string."""
    if isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    else:
        text = str(value).replace("\0", "").strip()
    if len(text) > _MAX_EXIF_VALUE:
        text = text[:_MAX_EXIF_VALUE] + "..."
    return text


class ImageProcessorTool(Tool):
    """Read image metadata, resize, convert and thumbnail images inside one sandbox."""

    name = _IMAGE_NAME
    description = (
        "Process an image file inside a sandbox directory (paths relative to it). "
        "operations: metadata (format, size, mode, frames, EXIF summary), resize ('width' "
        "and/or 'height'; with only one, or keep_aspect=true, the aspect ratio is kept), "
        "convert ('format' png, jpeg, webp, gif or bmp; default from the output's "
        "extension), thumbnail ('max_size': the longest side, never enlarged). resize, "
        "convert and thumbnail write 'output' (overwrite=true replaces an existing file)."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["metadata", "resize", "convert", "thumbnail"]},
            "path": {**_PATH, "description": "The input image."},
            "output": {**_PATH, "description": "The image written (not for metadata)."},
            "width": {"type": "integer", "minimum": 1, "maximum": _MAX_SIDE},
            "height": {"type": "integer", "minimum": 1, "maximum": _MAX_SIDE},
            "keep_aspect": {"type": "boolean",
                            "description": "resize: fit inside width x height keeping the "
                                           "aspect ratio (default true when only one side "
                                           "is given, false when both are)."},
            "max_size": {"type": "integer", "minimum": 1, "maximum": _MAX_SIDE,
                         "description": "thumbnail: the longest side in pixels."},
            "format": {"enum": sorted(IMAGE_FORMATS),
                       "description": "The output format (default from the extension)."},
            "quality": {"type": "integer", "minimum": 1, "maximum": 100,
                        "description": "jpeg/webp quality (default 85)."},
            "overwrite": {"type": "boolean", "description": "Replace an existing output."},
        },
        "required": ["operation", "path"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"enum": ["resize", "convert",
                                                          "thumbnail"]}}},
             "then": {"required": ["output"]}},
            {"if": {"properties": {"operation": {"const": "resize"}}},
             "then": {"anyOf": [{"required": ["width"]}, {"required": ["height"]}]}},
            {"if": {"properties": {"operation": {"const": "thumbnail"}}},
             "then": {"required": ["max_size"]}},
        ],
    }
    timeout = 60.0
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.FILE_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``file_write`` for resize, convert and thumbnail (they write 'output'); none
        otherwise."""
        return self.side_effects if params.get("operation") != "metadata" else frozenset()

    blocking = True

    def __init__(self, root: Path | str, *, max_pixels: int = 50_000_000,
                 max_bytes: int = 50 * MIB) -> None:
        self.root = check_root(root)
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def _fail(self, message: str, hint: str | None = None) -> ToolExecutionError:
        return ToolExecutionError(_IMAGE_NAME, message, hint=hint)

    def _check_pixels(self, width: int, height: int, what: str) -> None:
        if width * height > self.max_pixels:
            raise self._fail(
                f"{what} is {width}x{height} = {width * height} pixels, more than the limit "
                f"of {self.max_pixels} (a possible decompression bomb)",
                hint="raise max_pixels if the image is trusted, or use a smaller image")

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]`` on ``params["path"]``; see the class description."""
        image_module, exif_tags = _pillow()
        raw: str = params["path"]
        source = _input(self.root, raw, _IMAGE_NAME, self.max_bytes)
        operation: str = params["operation"]
        target: Path | None = None
        if operation != "metadata":
            target = _output(self.root, params["output"], _IMAGE_NAME,
                             params.get("overwrite", False))
        try:
            # Pillow's own bomb check is global state; ours runs on the header, per tool.
            with image_module.open(source, formats=INPUT_FORMATS) as image:
                width, height = image.size
                self._check_pixels(width, height, repr(raw))
                if operation == "metadata":
                    return self._metadata(image, raw, exif_tags)
                assert target is not None
                return self._transform(image, params, target)
        except ToolExecutionError:
            raise
        except image_module.UnidentifiedImageError:
            raise self._fail(f"{raw!r} is not an image in a supported format",
                             hint="supported inputs: " + ", ".join(
                                 f.lower() for f in INPUT_FORMATS)) from None
        except (image_module.DecompressionBombError, OSError, ValueError,
                SyntaxError) as exc:  # Pillow raises SyntaxError for some broken files
            raise self._fail(f"cannot process {raw!r}: {type(exc).__name__}: {exc}",
                             hint="the file may be truncated or corrupt") from None

    def _metadata(self, image: Any, raw: str, exif_tags: Any) -> dict[str, Any]:
        exif: dict[str, str] = {}
        truncated = False
        for tag, value in image.getexif().items():
            if len(exif) >= _MAX_EXIF_ENTRIES:
                truncated = True
                break
            exif[str(exif_tags.TAGS.get(tag, f"tag_{tag}"))] = _exif_value(value)
        width, height = image.size
        return {
            "path": raw, "format": image.format, "mode": image.mode, "width": width,
            "height": height, "frames": int(getattr(image, "n_frames", 1)),
            "animated": bool(getattr(image, "is_animated", False)),
            "bytes": Path(image.filename).stat().st_size if image.filename else None,
            "exif": exif, "exif_truncated": truncated,
        }

    def _format(self, params: dict[str, Any], target: Path) -> str:
        given: str | None = params.get("format")
        if given is None:
            given = target.suffix.lower().lstrip(".")
            if given not in IMAGE_FORMATS:
                raise self._fail(
                    f"cannot tell the output format from {params['output']!r}",
                    hint="pass 'format' (one of " + ", ".join(sorted(IMAGE_FORMATS)) + ") "
                    "or use a matching extension")
        return str(IMAGE_FORMATS[given])

    def _transform(self, image: Any, params: dict[str, Any], target: Path) -> dict[str, Any]:
        operation: str = params["operation"]
        out_format = self._format(params, target)
        source_size = image.size
        image.load()
        if operation == "resize":
            image = self._resize(image, params)
        elif operation == "thumbnail":
            image = image.copy()
            side: int = params["max_size"]
            image.thumbnail((side, side))
        if out_format == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")  # JPEG has no alpha and no palette
        elif out_format == "BMP" and image.mode not in ("1", "L", "P", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        options: dict[str, Any] = {}
        if out_format in ("JPEG", "WEBP"):
            options["quality"] = params.get("quality", 85)
        _write_atomic(target, lambda stream: image.save(stream, format=out_format, **options))
        return {
            "operation": operation, "path": params["path"],
            "output": _relative(self.root, target), "format": out_format.lower(),
            "source_size": list(source_size), "size": list(image.size), "mode": image.mode,
            "bytes": target.stat().st_size,
        }

    def _resize(self, image: Any, params: dict[str, Any]) -> Any:
        width, height = image.size
        new_w: int | None = params.get("width")
        new_h: int | None = params.get("height")
        keep = params.get("keep_aspect", new_w is None or new_h is None)
        if keep:
            scales = [s for s in ((new_w / width) if new_w else None,
                                  (new_h / height) if new_h else None) if s is not None]
            scale = min(scales)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
        else:
            size = (new_w or width, new_h or height)
        self._check_pixels(size[0], size[1], "the resized image")
        return image.resize(size)


# -- audio -------------------------------------------------------------------------------

_AUDIO_NAME: Final = "audio_processor"
AUDIO_FORMATS: Final = (".wav", ".wave")
"""File extensions the audio tool reads and writes (PCM WAV only)."""


def _to_pcm16(data: bytes, width: int) -> array.array[int]:
    """Little-endian PCM samples of ``width`` bytes as native 16-bit integers (the high
    16 bits of wider samples; 8-bit WAV is unsigned)."""
    count = len(data) // width
    data = data[:count * width]
    if width == 2:
        wide = data
    else:
        out = bytearray(count * 2)
        if width == 1:
            out[1::2] = data.translate(bytes((b ^ 0x80) for b in range(256)))
        else:
            out[0::2] = data[width - 2::width]
            out[1::2] = data[width - 1::width]
        wide = bytes(out)
    samples = array.array("h")
    samples.frombytes(wide)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _remix(samples: array.array[int], channels: int, target: int) -> array.array[int]:
    """Interleaved ``samples`` from ``channels`` to ``target`` channels: to mono averages
    every channel; to stereo from mono duplicates; otherwise keeps the first ones."""
    if channels == target:
        return samples
    frames = len(samples) // channels
    if target == 1:
        return array.array("h", (
            sum(samples[f * channels:(f + 1) * channels]) // channels for f in range(frames)))
    out = array.array("h", bytes(frames * target * 2))
    for c in range(target):
        out[c::target] = samples[min(c, channels - 1)::channels][:frames]
    return out


def _resample(samples: array.array[int], channels: int, rate: int,
              new_rate: int) -> array.array[int]:
    """Linear interpolation of interleaved ``samples`` from ``rate`` to ``new_rate``."""
    if rate == new_rate:
        return samples
    frames = len(samples) // channels
    new_frames = round(frames * new_rate / rate)
    out = array.array("h", bytes(new_frames * channels * 2))
    if frames == 0:
        return out
    step = rate / new_rate
    for c in range(channels):
        channel = samples[c::channels]
        last = frames - 1
        values = array.array("h")
        for i in range(new_frames):
            pos = i * step
            j = int(pos)
            if j >= last:
                values.append(channel[last])
                continue
            a = channel[j]
            values.append(round(a + (channel[j + 1] - a) * (pos - j)))
        out[c::channels] = values
    return out


class AudioProcessorTool(Tool):
    """Read WAV metadata, convert and trim WAV files inside one sandbox."""

    name = _AUDIO_NAME
    description = (
        "Process a PCM WAV file inside a sandbox directory (paths relative to it). "
        "operations: metadata (channels, sample width, frame rate, frames, duration), "
        "convert (to 16-bit PCM; 'sample_rate' resamples linearly, 'channels' 1 or 2 "
        "mixes down to mono or up to stereo; 'start'/'end' seconds cut it too), trim "
        "('start'/'end' seconds; the format is kept). convert and trim write 'output' "
        "(overwrite=true replaces an existing file). Only WAV is supported."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["metadata", "convert", "trim"]},
            "path": {**_PATH, "description": "The input WAV file."},
            "output": {**_PATH, "description": "The WAV file written (not for metadata)."},
            "sample_rate": {"type": "integer", "minimum": 1000, "maximum": 384_000},
            "channels": {"enum": [1, 2]},
            "start": {"type": "number", "minimum": 0,
                      "description": "Seconds from the start (default 0)."},
            "end": {"type": "number", "minimum": 0,
                    "description": "Seconds from the start (default the end)."},
            "overwrite": {"type": "boolean", "description": "Replace an existing output."},
        },
        "required": ["operation", "path"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"enum": ["convert", "trim"]}}},
             "then": {"required": ["output"]}},
        ],
    }
    timeout = 120.0
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.FILE_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``file_write`` for convert and trim (they write 'output'); none otherwise."""
        return self.side_effects if params.get("operation") != "metadata" else frozenset()

    blocking = True

    def __init__(self, root: Path | str, *, max_bytes: int = 100 * MIB) -> None:
        self.root = check_root(root)
        self.max_bytes = max_bytes

    def _fail(self, message: str, hint: str | None = None) -> ToolExecutionError:
        return ToolExecutionError(_AUDIO_NAME, message, hint=hint)

    def _check_format(self, raw: str, path: Path) -> None:
        if path.suffix.lower() not in AUDIO_FORMATS:
            raise self._fail(f"unsupported audio format {path.suffix or '(none)'!r} for "
                             f"{raw!r}; supported formats: wav",
                             hint="convert other formats to WAV first (e.g. with ffmpeg)")

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]`` on ``params["path"]``; see the class description."""
        raw: str = params["path"]
        source = _input(self.root, raw, _AUDIO_NAME, self.max_bytes)
        self._check_format(raw, source)
        operation: str = params["operation"]
        target: Path | None = None
        if operation != "metadata":
            target = _output(self.root, params["output"], _AUDIO_NAME,
                             params.get("overwrite", False))
            self._check_format(params["output"], target)
        try:
            with wave.open(str(source), "rb") as reader:
                channels = reader.getnchannels()
                width = reader.getsampwidth()
                rate = reader.getframerate()
                frames = reader.getnframes()
                info: dict[str, Any] = {
                    "channels": channels, "sample_width": width, "frame_rate": rate,
                    "frames": frames, "duration": frames / rate if rate else 0.0}
                if operation == "metadata":
                    return {"path": raw, "format": "wav", **info}
                first, last = self._range(params, rate, frames)
                reader.setpos(first)
                data = reader.readframes(last - first)
        except ToolExecutionError:
            raise
        except (wave.Error, EOFError, OSError) as exc:
            raise self._fail(f"{raw!r} is not a readable PCM WAV file: {exc}",
                             hint="only uncompressed PCM WAV is supported") from None
        assert target is not None
        if width not in (1, 2, 3, 4):
            raise self._fail(f"unsupported sample width of {width} bytes",
                             hint="8, 16, 24 and 32-bit PCM are supported")
        if operation == "convert":
            new_channels: int = params.get("channels", channels)
            new_rate: int = params.get("sample_rate", rate)
            samples = _to_pcm16(data, width)
            samples = _remix(samples, channels, new_channels)
            samples = _resample(samples, new_channels, rate, new_rate)
            if sys.byteorder == "big":
                samples.byteswap()
            data, channels, width, rate = samples.tobytes(), new_channels, 2, new_rate

        def write(stream: IO[bytes]) -> None:
            with wave.open(stream, "wb") as writer:
                writer.setnchannels(channels)
                writer.setsampwidth(width)
                writer.setframerate(rate)
                writer.writeframes(data)

        _write_atomic(target, write)
        out_frames = len(data) // (channels * width)
        return {"operation": operation, "path": raw, "output": _relative(self.root, target),
                "source": info, "channels": channels, "sample_width": width,
                "frame_rate": rate, "frames": out_frames,
                "duration": out_frames / rate if rate else 0.0}

    def _range(self, params: dict[str, Any], rate: int, frames: int) -> tuple[int, int]:
        """The frames [first, last) between ``start`` and ``end`` seconds."""
        start: float = params.get("start", 0)
        end: float | None = params.get("end")
        first = min(frames, round(start * rate))
        last = frames if end is None else min(frames, round(end * rate))
        if last <= first:
            raise self._fail(f"nothing between start={start} s and end={end} s (the file "
                             f"lasts {frames / rate if rate else 0:.3f} s)",
                             hint="'start' must be before 'end' and before the end of the "
                             "file")
        return first, last


# -- video -------------------------------------------------------------------------------

_VIDEO_NAME: Final = "video_processor"
_INSTALL_HINT: Final = ("install FFmpeg (e.g. 'apt-get install ffmpeg' or 'brew install "
                        "ffmpeg'), or pass ffmpeg= the directory or path of the ffmpeg "
                        "program")
FRAME_FORMATS: Final = (".png", ".jpg", ".jpeg")
"""Extensions of the still images frame extraction writes."""


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class VideoProcessorTool(Tool):
    """Read video metadata (ffprobe) and extract frames (ffmpeg) inside one sandbox."""

    name = _VIDEO_NAME
    description = (
        "Process a video file inside a sandbox directory (paths relative to it) with "
        "FFmpeg. operations: metadata (container format, duration, size, bit rate and "
        "streams with codec, size, frame rate, sample rate), frame (the frame at 'time' "
        "seconds, default 0, written as a png or jpg to 'output'; overwrite=true replaces "
        "an existing file)."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["metadata", "frame"]},
            "path": {**_PATH, "description": "The input video."},
            "output": {**_PATH, "description": "frame: the image written (.png/.jpg)."},
            "time": {"type": "number", "minimum": 0, "maximum": 360_000,
                     "description": "frame: seconds from the start (default 0)."},
            "overwrite": {"type": "boolean", "description": "Replace an existing output."},
        },
        "required": ["operation", "path"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"const": "frame"}}},
             "then": {"required": ["output"]}},
        ],
    }
    security_level = SecurityLevel.PRIVILEGED
    side_effects = frozenset({SideEffect.FILE_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``file_write`` for frame (it writes 'output'); none otherwise."""
        return self.side_effects if params.get("operation") != "metadata" else frozenset()

    blocking = True

    def __init__(self, root: Path | str, *, ffmpeg: str | Path | None = None,
                 timeout: float = 60.0) -> None:
        self.root = check_root(root)
        self.ffmpeg = None if ffmpeg is None else str(ffmpeg)
        self.process_timeout = timeout
        self.timeout = timeout + 5.0  # the subprocess times out first, with a clear error

    def _fail(self, message: str, hint: str | None = None) -> ToolExecutionError:
        return ToolExecutionError(_VIDEO_NAME, message, hint=hint)

    def program(self, name: str) -> str:
        """The path of ``name`` (``ffmpeg`` or ``ffprobe``): from the ``ffmpeg`` option (a
        directory holding both, or the ffmpeg program with ffprobe next to it), else from
        ``PATH``. :class:`ToolExecutionError` with an install hint when it is missing."""
        found: str | None
        if self.ffmpeg is None:
            found = shutil.which(name)
        else:
            given = Path(self.ffmpeg)
            if given.is_dir():
                found = shutil.which(name, path=str(given))
            elif name == "ffmpeg":
                found = shutil.which(str(given))
            else:
                sibling = given.with_name(given.name.replace("ffmpeg", name))
                found = shutil.which(str(sibling)) if sibling != given else None
        if found is None:
            where = "on PATH" if self.ffmpeg is None else f"at {self.ffmpeg!r}"
            raise self._fail(f"the {name} program was not found {where}", hint=_INSTALL_HINT)
        return found

    def _run(self, argv: list[str]) -> bytes:
        """Run ``argv`` (no shell) and return its stdout; errors say what failed."""
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.process_timeout, check=False)
        except subprocess.TimeoutExpired:
            raise self._fail(f"{Path(argv[0]).name} ran past {self.process_timeout:g} s and "
                             "was stopped", hint="raise the timeout option") from None
        except OSError as exc:
            raise self._fail(f"cannot run {argv[0]!r}: {exc}", hint=_INSTALL_HINT) from None
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip()[-500:]
            raise self._fail(f"{Path(argv[0]).name} failed (exit {done.returncode}): "
                             f"{detail or 'no message'}",
                             hint="check that the file is a video FFmpeg can read")
        return done.stdout

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]`` on ``params["path"]``; see the class description."""
        raw: str = params["path"]
        source = _input(self.root, raw, _VIDEO_NAME, None)
        if params["operation"] == "metadata":
            return self._metadata(source, raw)
        return self._frame(source, raw, params)

    def _metadata(self, source: Path, raw: str) -> dict[str, Any]:
        argv = [self.program("ffprobe"), "-v", "error", "-print_format", "json",
                "-show_format", "-show_streams", f"file:{source}"]
        out = self._run(argv)
        if len(out) > _MAX_PROBE_OUTPUT:
            raise self._fail("ffprobe printed more than 4 MiB", hint="is this a video file?")
        try:
            probed = json.loads(out)
        except ValueError:
            raise self._fail("ffprobe did not print JSON",
                             hint="check the ffprobe program given") from None
        if not isinstance(probed, dict):
            raise self._fail("ffprobe printed unexpected JSON")
        found = probed.get("format")
        fmt: dict[str, Any] = found if isinstance(found, dict) else {}
        streams = [s for s in probed.get("streams") or [] if isinstance(s, dict)]
        keep = ("index", "codec_type", "codec_name", "width", "height", "r_frame_rate",
                "pix_fmt", "sample_rate", "channels", "bit_rate")
        summary = []
        for stream in streams:
            item = {k: stream[k] for k in keep if isinstance(stream.get(k), (str, int))}
            item["duration"] = _number(stream.get("duration"))
            summary.append(item)
        return {
            "path": raw,
            "format": fmt.get("format_name") if isinstance(fmt.get("format_name"), str)
            else None,
            "duration": _number(fmt.get("duration")),
            "bytes": int(_number(fmt.get("size")) or source.stat().st_size),
            "bit_rate": _number(fmt.get("bit_rate")),
            "streams": summary,
        }

    def _frame(self, source: Path, raw: str, params: dict[str, Any]) -> dict[str, Any]:
        overwrite: bool = params.get("overwrite", False)
        target = _output(self.root, params["output"], _VIDEO_NAME, overwrite)
        if target.suffix.lower() not in FRAME_FORMATS:
            raise self._fail(f"the output {params['output']!r} must end in .png or .jpg",
                             hint="frames are written as still images")
        time: float = params.get("time", 0)
        argv = [self.program("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error",
                "-y" if overwrite else "-n", "-ss", str(float(time)), "-i", f"file:{source}",
                "-frames:v", "1", f"file:{target}"]
        self._run(argv)
        if not target.is_file() or target.stat().st_size == 0:
            raise self._fail(f"ffmpeg wrote no frame at {time:g} s",
                             hint="is 'time' within the video's duration?")
        return {"operation": "frame", "path": raw, "output": _relative(self.root, target),
                "time": time, "bytes": target.stat().st_size}
