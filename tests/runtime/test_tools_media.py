"""The media tools: image processor (Pillow), audio processor (WAV, stdlib) and video
processor (ffprobe / ffmpeg).

Tools are called directly (``validate`` then ``execute``), the way the pipeline calls them,
and once each through a running system. FFmpeg is not needed: the video tests use fake
``ffprobe`` / ``ffmpeg`` scripts written to ``tmp_path``, or check the error when the
programs are missing.
"""

from __future__ import annotations

import array
import json
import math
import os
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.errors import (
    ConfigurationError,
    SandboxViolationError,
    ToolExecutionError,
    ToolValidationError,
)
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.library.media_tools import (
    AudioProcessorTool,
    ImageProcessorTool,
    VideoProcessorTool,
)
from tests.ci import require_module
from tests.runtime.tool_helpers import call

Image = require_module("PIL.Image", install="Pillow (llmspell[media])")




@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    root.mkdir()
    return root


def make_image(path: Path, size: tuple[int, int] = (40, 20), mode: str = "RGB",
               fmt: str | None = None, exif: dict[int, Any] | None = None) -> Path:
    image = Image.new(mode, size, "red" if mode != "RGBA" else (255, 0, 0, 128))
    options: dict[str, Any] = {}
    if exif:
        data = Image.Exif()
        for tag, value in exif.items():
            data[tag] = value
        options["exif"] = data
    image.save(path, format=fmt, **options)
    return path


def make_wav(path: Path, *, rate: int = 8000, channels: int = 1, width: int = 2,
             seconds: float = 1.0, freq: float = 440.0) -> Path:
    frames = int(rate * seconds)
    peak = (1 << (8 * width - 1)) - 1
    data = bytearray()
    for i in range(frames):
        value = int(peak * 0.5 * math.sin(2 * math.pi * freq * i / rate))
        for c in range(channels):
            sample = value if c == 0 else -value
            if width == 1:
                data += bytes([(sample + 128) & 0xFF])
            else:
                data += sample.to_bytes(width, "little", signed=True)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(bytes(data))
    return path


def read_wav(path: Path) -> tuple[int, int, int, array.array[int]]:
    with wave.open(str(path), "rb") as reader:
        channels, width, rate = (reader.getnchannels(), reader.getsampwidth(),
                                 reader.getframerate())
        data = reader.readframes(reader.getnframes())
    samples = array.array("h")
    if width == 2:
        samples.frombytes(data)
        if sys.byteorder == "big":
            samples.byteswap()
    return channels, width, rate, samples


# -- image -----------------------------------------------------------------------------


def test_image_metadata_with_exif(sandbox: Path) -> None:
    make_image(sandbox / "a.jpg", (64, 32), fmt="JPEG",
               exif={0x010F: "ACME", 0x0110: "Cam 1", 0x927C: b"\x00\x01" * 10})
    result = call(ImageProcessorTool(sandbox), {"operation": "metadata", "path": "a.jpg"})
    assert result["format"] == "JPEG" and result["mode"] == "RGB"
    assert (result["width"], result["height"], result["frames"]) == (64, 32, 1)
    assert result["exif"]["Make"] == "ACME" and result["exif"]["Model"] == "Cam 1"
    assert result["exif"]["MakerNote"] == "<20 bytes>"
    assert result["bytes"] == (sandbox / "a.jpg").stat().st_size
    assert result["exif_truncated"] is False


def test_image_resize_keeps_aspect(sandbox: Path) -> None:
    make_image(sandbox / "a.png", (40, 20))
    tool = ImageProcessorTool(sandbox)
    result = call(tool, {"operation": "resize", "path": "a.png", "output": "b.png",
                         "width": 20})
    assert result["size"] == [20, 10] and result["source_size"] == [40, 20]
    assert result["output"] == "b.png"
    with Image.open(sandbox / "b.png") as out:
        assert out.size == (20, 10)
    both = call(tool, {"operation": "resize", "path": "a.png", "output": "c.png",
                       "width": 10, "height": 10, "keep_aspect": True})
    assert both["size"] == [10, 5]
    stretched = call(tool, {"operation": "resize", "path": "a.png", "output": "d.png",
                            "width": 10, "height": 10})
    assert stretched["size"] == [10, 10]


def test_image_convert_formats(sandbox: Path) -> None:
    make_image(sandbox / "a.png", (16, 16), mode="RGBA")
    tool = ImageProcessorTool(sandbox)
    jpeg = call(tool, {"operation": "convert", "path": "a.png", "output": "a.jpg"})
    assert jpeg["format"] == "jpeg" and jpeg["mode"] == "RGB"  # alpha dropped for JPEG
    with Image.open(sandbox / "a.jpg") as out:
        assert out.format == "JPEG"
    for fmt in ("gif", "bmp", "webp", "png"):
        out_name = f"x/out.{fmt}"
        (sandbox / "x").mkdir(exist_ok=True)
        done = call(tool, {"operation": "convert", "path": "a.png", "output": out_name,
                           "format": fmt, "overwrite": True})
        assert done["format"] == fmt
        with Image.open(sandbox / out_name) as out:
            assert out.format == fmt.upper()
    # the format given wins over the extension
    call(tool, {"operation": "convert", "path": "a.png", "output": "odd.img",
                "format": "png"})
    with Image.open(sandbox / "odd.img") as out:
        assert out.format == "PNG"


def test_image_thumbnail_never_enlarges(sandbox: Path) -> None:
    make_image(sandbox / "a.png", (100, 50))
    tool = ImageProcessorTool(sandbox)
    assert call(tool, {"operation": "thumbnail", "path": "a.png", "output": "t.png",
                       "max_size": 10})["size"] == [10, 5]
    assert call(tool, {"operation": "thumbnail", "path": "a.png", "output": "u.png",
                       "max_size": 500})["size"] == [100, 50]


def test_image_overwrite_flag(sandbox: Path) -> None:
    make_image(sandbox / "a.png")
    make_image(sandbox / "b.png", (5, 5))
    tool = ImageProcessorTool(sandbox)
    params = {"operation": "resize", "path": "a.png", "output": "b.png", "width": 8}
    with pytest.raises(ToolExecutionError, match="exists") as info:
        call(tool, params)
    assert info.value.hint and "overwrite" in info.value.hint
    with Image.open(sandbox / "b.png") as untouched:
        assert untouched.size == (5, 5)
    assert call(tool, {**params, "overwrite": True})["size"] == [8, 4]
    assert not [p for p in sandbox.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("params", [
    {"operation": "resize", "path": "a.png"},                         # no output
    {"operation": "resize", "path": "a.png", "output": "b.png"},      # no width/height
    {"operation": "thumbnail", "path": "a.png", "output": "b.png"},   # no max_size
    {"operation": "convert", "path": "a.png", "output": "b.x", "format": "tiff"},
    {"operation": "rotate", "path": "a.png"},
    {"operation": "metadata", "path": ""},
    {"operation": "resize", "path": "a.png", "output": "b.png", "width": 0},
    {"operation": "metadata", "path": "a.png", "extra": 1},
])
def test_image_schema_errors(sandbox: Path, params: dict[str, Any]) -> None:
    with pytest.raises(ToolValidationError):
        ImageProcessorTool(sandbox).validate(params)


def test_image_execution_errors(sandbox: Path) -> None:
    tool = ImageProcessorTool(sandbox)
    with pytest.raises(ToolExecutionError, match="does not exist"):
        call(tool, {"operation": "metadata", "path": "missing.png"})
    (sandbox / "notes.png").write_text("not an image")
    with pytest.raises(ToolExecutionError, match="not an image in a supported format"):
        call(tool, {"operation": "metadata", "path": "notes.png"})
    # formats outside the allow-list (here ICO) are not opened at all
    make_image(sandbox / "icon.ico", (16, 16), fmt="ICO")
    with pytest.raises(ToolExecutionError, match="supported format") as info:
        call(tool, {"operation": "metadata", "path": "icon.ico"})
    assert info.value.hint and "tiff" in info.value.hint
    make_image(sandbox / "a.png")
    with pytest.raises(ToolExecutionError, match="output format") as info:
        call(tool, {"operation": "convert", "path": "a.png", "output": "a.tiff"})
    assert info.value.hint and "png" in info.value.hint
    with pytest.raises(ToolExecutionError, match="directory"):
        call(tool, {"operation": "convert", "path": "a.png", "output": "nodir/a.jpg"})
    # a truncated file is reported, not crashed on
    data = (sandbox / "a.png").read_bytes()
    (sandbox / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ToolExecutionError, match="cannot process"):
        call(tool, {"operation": "resize", "path": "cut.png", "output": "o.png",
                    "width": 4})


def test_image_sandbox(sandbox: Path) -> None:
    make_image(sandbox.parent / "outside.png")
    make_image(sandbox / "a.png")
    tool = ImageProcessorTool(sandbox)
    for bad in ("../outside.png", str(sandbox.parent / "outside.png"), "x/../../outside.png"):
        with pytest.raises(SandboxViolationError):
            call(tool, {"operation": "metadata", "path": bad})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "convert", "path": "a.png", "output": "../leak.jpg"})
    (sandbox / "link.png").symlink_to(sandbox.parent / "outside.png")
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "metadata", "path": "link.png"})
    assert not (sandbox.parent / "leak.jpg").exists()


def test_image_decompression_bomb_guard(sandbox: Path) -> None:
    make_image(sandbox / "big.png", (100, 100))
    tool = ImageProcessorTool(sandbox, max_pixels=5_000)
    with pytest.raises(ToolExecutionError, match="decompression bomb") as info:
        call(tool, {"operation": "metadata", "path": "big.png"})
    assert info.value.hint and "max_pixels" in info.value.hint
    # a resize that would produce a bomb is refused too
    make_image(sandbox / "small.png", (10, 10))
    with pytest.raises(ToolExecutionError, match="resized image"):
        call(tool, {"operation": "resize", "path": "small.png", "output": "huge.png",
                    "width": 1000})
    assert not (sandbox / "huge.png").exists()
    with pytest.raises(ToolExecutionError, match="limit"):
        call(ImageProcessorTool(sandbox, max_bytes=10),
             {"operation": "metadata", "path": "small.png"})


def test_image_missing_pillow(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    make_image(sandbox / "a.png")
    with pytest.raises(ConfigurationError) as info:
        ImageProcessorTool(sandbox).execute({"operation": "metadata", "path": "a.png"})
    assert info.value.hint == "pip install 'llmspell[media]'"


def test_bad_root(tmp_path: Path) -> None:
    for cls in (ImageProcessorTool, AudioProcessorTool, VideoProcessorTool):
        with pytest.raises(ConfigurationError):
            cls(tmp_path / "missing")


# -- audio -----------------------------------------------------------------------------


def test_audio_metadata(sandbox: Path) -> None:
    make_wav(sandbox / "a.wav", rate=8000, channels=2, seconds=0.5)
    result = call(AudioProcessorTool(sandbox), {"operation": "metadata", "path": "a.wav"})
    assert result == {"path": "a.wav", "format": "wav", "channels": 2, "sample_width": 2,
                      "frame_rate": 8000, "frames": 4000, "duration": 0.5}


def test_audio_convert_rate_and_channels(sandbox: Path) -> None:
    make_wav(sandbox / "a.wav", rate=8000, channels=1, seconds=0.5)
    tool = AudioProcessorTool(sandbox)
    result = call(tool, {"operation": "convert", "path": "a.wav", "output": "b.wav",
                         "sample_rate": 16000, "channels": 2})
    assert (result["channels"], result["frame_rate"], result["frames"]) == (2, 16000, 8000)
    assert result["duration"] == pytest.approx(0.5)
    channels, width, rate, samples = read_wav(sandbox / "b.wav")
    assert (channels, width, rate) == (2, 2, 16000)
    assert samples[0::2] == samples[1::2]            # mono duplicated
    _, _, _, original = read_wav(sandbox / "a.wav")
    assert samples[0::2][::2][:100] == original[:100]  # upsampled: even frames are exact
    # stereo (opposite channels) to mono averages to silence; downsample halves the frames
    make_wav(sandbox / "s.wav", rate=8000, channels=2, seconds=0.25)
    mono = call(tool, {"operation": "convert", "path": "s.wav", "output": "m.wav",
                       "channels": 1, "sample_rate": 4000})
    assert (mono["channels"], mono["frames"]) == (1, 1000)
    _, _, _, averaged = read_wav(sandbox / "m.wav")
    assert max(abs(v) for v in averaged) <= 1


def test_audio_convert_more_than_two_channels(sandbox: Path) -> None:
    make_wav(sandbox / "three.wav", channels=3, seconds=0.1)  # v, -v, -v
    tool = AudioProcessorTool(sandbox)
    call(tool, {"operation": "convert", "path": "three.wav", "output": "st.wav",
                "channels": 2})
    _, _, _, original = read_wav(sandbox / "three.wav")
    channels, _, _, stereo = read_wav(sandbox / "st.wav")
    assert channels == 2
    assert stereo[0::2] == original[0::3] and stereo[1::2] == original[1::3]
    call(tool, {"operation": "convert", "path": "three.wav", "output": "mono.wav",
                "channels": 1, "start": 0.05})
    channels, _, _, mono = read_wav(sandbox / "mono.wav")
    assert channels == 1 and len(mono) == 400
    assert list(mono) == [(a + b + c) // 3 for a, b, c in zip(
        original[1200::3], original[1201::3], original[1202::3], strict=True)]


@pytest.mark.parametrize("width", [1, 3, 4])
def test_audio_convert_to_16_bit(sandbox: Path, width: int) -> None:
    make_wav(sandbox / "a.wav", width=width, seconds=0.1)
    result = call(AudioProcessorTool(sandbox), {"operation": "convert", "path": "a.wav",
                                                "output": "b.wav"})
    assert result["sample_width"] == 2 and result["source"]["sample_width"] == width
    _, _, _, samples = read_wav(sandbox / "b.wav")
    assert len(samples) == 800
    peak = max(samples)
    assert 16000 - 300 < peak < 16400  # half scale, whatever the input width


def test_audio_trim(sandbox: Path) -> None:
    make_wav(sandbox / "a.wav", rate=8000, channels=2, seconds=1.0)
    tool = AudioProcessorTool(sandbox)
    result = call(tool, {"operation": "trim", "path": "a.wav", "output": "t.wav",
                         "start": 0.25, "end": 0.5})
    assert (result["frames"], result["duration"]) == (2000, 0.25)
    with wave.open(str(sandbox / "a.wav"), "rb") as a, wave.open(str(sandbox / "t.wav"),
                                                                 "rb") as t:
        a.setpos(2000)
        assert t.readframes(2000) == a.readframes(2000)
    tail = call(tool, {"operation": "trim", "path": "a.wav", "output": "tail.wav",
                       "start": 0.9, "end": 5})
    assert tail["frames"] == 800
    with pytest.raises(ToolExecutionError, match="nothing between"):
        call(tool, {"operation": "trim", "path": "a.wav", "output": "x.wav", "start": 2})
    with pytest.raises(ToolExecutionError, match="nothing between"):
        call(tool, {"operation": "trim", "path": "a.wav", "output": "x.wav", "start": 0.5,
                    "end": 0.5})


def test_audio_errors(sandbox: Path) -> None:
    tool = AudioProcessorTool(sandbox)
    with pytest.raises(ToolExecutionError, match="does not exist"):
        call(tool, {"operation": "metadata", "path": "missing.wav"})
    (sandbox / "song.mp3").write_bytes(b"ID3\x03fake")
    with pytest.raises(ToolExecutionError, match="supported formats: wav"):
        call(tool, {"operation": "metadata", "path": "song.mp3"})
    (sandbox / "fake.wav").write_bytes(b"RIFF....not a wave file")
    with pytest.raises(ToolExecutionError, match="not a readable PCM WAV"):
        call(tool, {"operation": "metadata", "path": "fake.wav"})
    make_wav(sandbox / "a.wav", seconds=0.1)
    with pytest.raises(ToolExecutionError, match="supported formats: wav"):
        call(tool, {"operation": "convert", "path": "a.wav", "output": "a.mp3"})
    with pytest.raises(ToolExecutionError, match="exists"):
        call(tool, {"operation": "trim", "path": "a.wav", "output": "a.wav", "end": 0.05})
    with pytest.raises(ToolExecutionError, match="limit"):
        call(AudioProcessorTool(sandbox, max_bytes=10), {"operation": "metadata",
                                                         "path": "a.wav"})
    for params in ({"operation": "convert", "path": "a.wav"},
                   {"operation": "convert", "path": "a.wav", "output": "b.wav",
                    "channels": 6},
                   {"operation": "convert", "path": "a.wav", "output": "b.wav",
                    "sample_rate": 10},
                   {"operation": "trim", "path": "a.wav", "output": "b.wav", "start": -1},
                   {"operation": "normalize", "path": "a.wav"}):
        with pytest.raises(ToolValidationError):
            tool.validate(params)


def test_audio_sandbox(sandbox: Path) -> None:
    make_wav(sandbox.parent / "outside.wav", seconds=0.1)
    make_wav(sandbox / "a.wav", seconds=0.1)
    tool = AudioProcessorTool(sandbox)
    for bad in ("../outside.wav", str(sandbox.parent / "outside.wav")):
        with pytest.raises(SandboxViolationError):
            call(tool, {"operation": "metadata", "path": bad})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "trim", "path": "a.wav", "output": "../x.wav"})
    assert not (sandbox.parent / "x.wav").exists()


# -- video -----------------------------------------------------------------------------


FAKE_FFPROBE = """#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
if not sys.argv[-1].startswith("file:"):
    sys.exit(2)
print(json.dumps({{
    "format": {{"format_name": "mov,mp4", "duration": "2.500000", "size": "1234",
                "bit_rate": "3948"}},
    "streams": [
        {{"index": 0, "codec_type": "video", "codec_name": "h264", "width": 320,
          "height": 240, "r_frame_rate": "25/1", "duration": "2.5", "tags": {{}}}},
        {{"index": 1, "codec_type": "audio", "codec_name": "aac", "sample_rate": "44100",
          "channels": 2, "duration": "n/a"}},
    ],
}}))
"""

FAKE_FFMPEG = """#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
if "fail" in sys.argv[-1]:
    sys.stderr.write("Invalid data found when processing input\\n")
    sys.exit(1)
with open(sys.argv[-1].removeprefix("file:"), "wb") as out:
    out.write(bytes.fromhex({png!r}))
"""


@pytest.fixture
def fake_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """A directory with fake ffprobe/ffmpeg scripts, and the log of their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    png = tmp_path / "frame.png"
    make_image(png, (4, 4))
    for name, text in (("ffprobe", FAKE_FFPROBE), ("ffmpeg", FAKE_FFMPEG)):
        script = bin_dir / name
        script.write_text(text.format(python=sys.executable, log=str(log),
                                      png=png.read_bytes().hex()))
        script.chmod(0o755)
    return bin_dir, log


def logged(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_video_missing_ffmpeg(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(sandbox))  # nothing named ffmpeg/ffprobe there
    (sandbox / "v.mp4").write_bytes(b"\0" * 16)
    tool = VideoProcessorTool(sandbox)
    with pytest.raises(ToolExecutionError, match="ffprobe program was not found") as info:
        call(tool, {"operation": "metadata", "path": "v.mp4"})
    assert info.value.hint and "apt-get install ffmpeg" in info.value.hint
    assert "brew install ffmpeg" in info.value.hint
    with pytest.raises(ToolExecutionError, match="ffmpeg program was not found"):
        call(tool, {"operation": "frame", "path": "v.mp4", "output": "f.png"})
    with pytest.raises(ToolExecutionError, match="not found at"):
        call(VideoProcessorTool(sandbox, ffmpeg=str(sandbox / "nope")),
             {"operation": "frame", "path": "v.mp4", "output": "f.png"})


def test_video_metadata_command(sandbox: Path, fake_ffmpeg: tuple[Path, Path]) -> None:
    bin_dir, log = fake_ffmpeg
    (sandbox / "v.mp4").write_bytes(b"\0" * 16)
    result = call(VideoProcessorTool(sandbox, ffmpeg=str(bin_dir)),
                  {"operation": "metadata", "path": "v.mp4"})
    assert logged(log) == [[str(bin_dir / "ffprobe"), "-v", "error", "-print_format",
                            "json", "-show_format", "-show_streams",
                            f"file:{sandbox / 'v.mp4'}"]]
    assert result["format"] == "mov,mp4" and result["duration"] == 2.5
    assert result["bytes"] == 1234 and result["bit_rate"] == 3948.0
    video, audio = result["streams"]
    assert video == {"index": 0, "codec_type": "video", "codec_name": "h264", "width": 320,
                     "height": 240, "r_frame_rate": "25/1", "duration": 2.5}
    assert audio["sample_rate"] == "44100" and audio["duration"] is None


def test_video_frame_command(sandbox: Path, fake_ffmpeg: tuple[Path, Path]) -> None:
    bin_dir, log = fake_ffmpeg
    (sandbox / "v.mp4").write_bytes(b"\0" * 16)
    # the ffmpeg option may also name the ffmpeg program itself
    tool = VideoProcessorTool(sandbox, ffmpeg=str(bin_dir / "ffmpeg"), timeout=20)
    result = call(tool, {"operation": "frame", "path": "v.mp4", "output": "f.png",
                         "time": 1.5})
    assert logged(log) == [[str(bin_dir / "ffmpeg"), "-nostdin", "-hide_banner",
                            "-loglevel", "error", "-n", "-ss", "1.5", "-i",
                            f"file:{sandbox / 'v.mp4'}", "-frames:v", "1",
                            f"file:{sandbox / 'f.png'}"]]
    assert result == {"operation": "frame", "path": "v.mp4", "output": "f.png",
                      "time": 1.5, "bytes": (sandbox / "f.png").stat().st_size}
    with Image.open(sandbox / "f.png") as frame:
        assert frame.size == (4, 4)
    with pytest.raises(ToolExecutionError, match="exists"):
        call(tool, {"operation": "frame", "path": "v.mp4", "output": "f.png"})
    call(tool, {"operation": "frame", "path": "v.mp4", "output": "f.png", "overwrite": True})
    assert logged(log)[-1][5] == "-y"
    # ffprobe found next to the ffmpeg program
    assert call(tool, {"operation": "metadata", "path": "v.mp4"})["duration"] == 2.5


def test_video_errors(sandbox: Path, fake_ffmpeg: tuple[Path, Path]) -> None:
    bin_dir, _ = fake_ffmpeg
    (sandbox / "v.mp4").write_bytes(b"\0" * 16)
    tool = VideoProcessorTool(sandbox, ffmpeg=str(bin_dir))
    with pytest.raises(ToolExecutionError, match=r"failed \(exit 1\): Invalid data"):
        call(tool, {"operation": "frame", "path": "v.mp4", "output": "fail.png"})
    with pytest.raises(ToolExecutionError, match=r"\.png or \.jpg"):
        call(tool, {"operation": "frame", "path": "v.mp4", "output": "f.gif"})
    with pytest.raises(ToolExecutionError, match="does not exist"):
        call(tool, {"operation": "metadata", "path": "missing.mp4"})
    for bad in ("../v.mp4", "/etc/passwd"):
        with pytest.raises(SandboxViolationError):
            call(tool, {"operation": "metadata", "path": bad})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "frame", "path": "v.mp4", "output": "../f.png"})
    for params in ({"operation": "frame", "path": "v.mp4"},
                   {"operation": "frame", "path": "v.mp4", "output": "f.png", "time": -1},
                   {"operation": "transcode", "path": "v.mp4"}):
        with pytest.raises(ToolValidationError):
            tool.validate(params)


def test_video_timeout(sandbox: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    slow.mkdir()
    script = slow / "ffprobe"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    script.chmod(0o755)
    (sandbox / "v.mp4").write_bytes(b"\0")
    tool = VideoProcessorTool(sandbox, ffmpeg=str(slow), timeout=0.5)
    assert tool.timeout == 5.5
    with pytest.raises(ToolExecutionError, match=r"ran past 0\.5 s"):
        call(tool, {"operation": "metadata", "path": "v.mp4"})


# -- through the runtime ----------------------------------------------------------------


async def test_media_tools_through_the_system(sandbox: Path,
                                              fake_ffmpeg: tuple[Path, Path]) -> None:
    make_image(sandbox / "a.png", (30, 10))
    make_wav(sandbox / "a.wav", seconds=0.2)
    (sandbox / "v.mp4").write_bytes(b"\0" * 16)
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(ImageProcessorTool(sandbox))
        system.tools.register(AudioProcessorTool(sandbox))
        system.tools.register(VideoProcessorTool(sandbox, ffmpeg=str(fake_ffmpeg[0])))
        image = await system.tools.execute("image_processor", {
            "operation": "thumbnail", "path": "a.png", "output": "t.png", "max_size": 6})
        assert image["size"] == [6, 2]
        audio = await system.tools.execute("audio_processor", {
            "operation": "metadata", "path": "a.wav"})
        assert audio["frames"] == 1600
        video = await system.tools.execute("video_processor", {
            "operation": "metadata", "path": "v.mp4"})
        assert video["streams"][0]["codec_name"] == "h264"
        with pytest.raises(ToolValidationError):
            await system.tools.execute("audio_processor", {"operation": "trim",
                                                           "path": "a.wav"})
        with pytest.raises(SandboxViolationError):
            await system.tools.execute("image_processor", {"operation": "metadata",
                                                           "path": "../a.png"})
    assert os.path.exists(sandbox / "t.png")
