"""Reading media facts (durations, streams, audio samples) and writing generated clips, with PyAV."""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import wave
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StageError


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds."""

    video_duration: float | None
    audio_duration: float | None
    width: int | None = None
    height: int | None = None
    fps: Fraction | None = None
    pix_fmt: str | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    frames: int | None = None
    profile: str | None = None
    sar: Fraction | None = None

    @property
    def duration(self) -> float:
        return max(self.video_duration or 0.0, self.audio_duration or 0.0)


def _stream_duration(stream) -> float | None:  # type: ignore[no-untyped-def]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def probe(path: Path) -> MediaInfo:
    """Streams and durations of a media file; StageError if it cannot be read."""
    import av

    try:
        with av.open(str(path)) as container:
            video = next(iter(container.streams.video), None)
            audio = next(iter(container.streams.audio), None)
            info = MediaInfo(
                video_duration=_stream_duration(video) if video else None,
                audio_duration=_stream_duration(audio) if audio else None,
                width=video.codec_context.width if video else None,
                height=video.codec_context.height if video else None,
                fps=video.average_rate if video else None,
                pix_fmt=video.codec_context.pix_fmt if video else None,
                video_codec=video.codec_context.name if video else None,
                audio_codec=audio.codec_context.name if audio else None,
                sample_rate=audio.codec_context.sample_rate if audio else None,
                channels=audio.codec_context.channels if audio else None,
                frames=video.frames if video else None,
                profile=video.codec_context.profile if video else None,
                sar=video.codec_context.sample_aspect_ratio if video else None,
            )
    except (av.error.FFmpegError, OSError) as error:
        raise StageError(f"{path}: not a readable media file ({error})") from None
    return info


def wav_duration(path: Path) -> float:
    """Length of a WAV file in seconds (PCM via `wave`, anything else via PyAV)."""
    try:
        with wave.open(str(path), "rb") as handle:
            return handle.getnframes() / float(handle.getframerate())
    except (wave.Error, EOFError):
        return probe(path).duration


def decode_audio(path: Path, rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream to mono float32 at `rate`."""
    return load_audio(path, rate, channels=1)[0]


def speech_span(samples: np.ndarray, rate: int, threshold_db: float = -40.0) -> tuple[float, float] | None:
    """First and last moment the signal rises above `threshold_db` (20 ms windows)."""
    window = max(1, rate // 50)
    usable = len(samples) - len(samples) % window
    if usable == 0:
        return None
    rms = np.sqrt(np.mean(samples[:usable].reshape(-1, window) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms) > threshold_db)
    if loud.size == 0:
        return None
    return loud[0] * window / rate, (loud[-1] + 1) * window / rate


def load_audio(path: Path, rate: int, channels: int = 2) -> np.ndarray:
    """Decode the first audio stream as float32 (channels, samples) at `rate`, resampled only if it differs."""
    import av

    layout = {1: "mono", 2: "stereo"}[channels]
    chunks = []
    resampler = None
    with av.open(str(path)) as container:
        context = container.streams.audio[0].codec_context
        same = context.sample_rate == rate and context.channels == channels
        for frame in container.decode(audio=0):
            if same and frame.format.name == "fltp":
                chunks.append(frame.to_ndarray())
                continue
            if resampler is None:
                resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
        if resampler is not None:
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    return np.concatenate(chunks, axis=1).astype(np.float32) if chunks else np.zeros((channels, 0), dtype=np.float32)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """(channels, n) padded with silence or cut to `length` samples."""
    if samples.shape[1] >= length:
        return samples[:, :length]
    return np.pad(samples, ((0, 0), (0, length - samples.shape[1])))


def last_frame(path: Path):  # type: ignore[no-untyped-def]
    """The last video frame of a clip as an RGB PIL image. Decoding starts at the clip's last keyframe (`write_clip`
    makes the last frame one, so an sfx beat reads one frame, not the whole clip before it); a clip that cannot seek
    is decoded from its start."""
    import av

    frame = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads, for a clip whose last keyframe is far from its end
        end = stream.duration or 2**62  # in the stream's time base; past the end lands on the last keyframe too
        for offset in (end, 0):
            try:
                container.seek(offset, stream=stream, backward=True)
            except av.error.FFmpegError:
                continue
            for frame in container.decode(stream):  # noqa: B007 - keep the last one
                pass
            if frame is not None:
                break
    if frame is None:
        raise StageError(f"{path}: no video frames")
    return frame.to_image()


class Encoder:
    """Encodes clips (x264) in one child process beside a GPU job. In a thread of the GPU process, the encoder's
    per-frame calls held the interpreter lock and the loop feeding the GPU waited on them; the frames also do not go
    through a pipe (writing 100+ MB to it takes the lock thousands of times): the caller writes them into shared
    memory and the child reads them there. The child runs at a lower CPU priority (nice 10) and off the first
    `spare_cores` cores (where it has twice that many or more; x264 sizes its threads to the rest), so the thread
    feeding the GPU always finds a free core. It starts on first use (spawn: never a fork
    of a process holding CUDA) and lives until `close()`."""

    def __init__(self, spare_cores: int = 2) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.spare_cores = spare_cores

    def submit_frames(self, shape: tuple[int, ...], fill: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fill(frames)` writes uint8 frames of `shape` into shared memory now, in this thread; then
        `fn(frames, *args, **kwargs)` starts in the child. Returns a function that waits for its result."""
        return self.stream(shape, fn, *args, fill=fill, **kwargs).wait

    def stream(self, shape: tuple[int, ...], fn: Any, *args: Any, fill: Any = None, **kwargs: Any) -> ClipStream:
        """`fn(frames, *args, **kwargs)` in the child on uint8 frames of `shape` that this process writes into shared
        memory: all of them first where `fill(frames)` is given, else as they are made (`ClipStream.frames`, then
        `ready(n)`): the child reads frame i once it is ready, so the encode runs beside the rest of the frames' making.
        An argument `LATE_SOUND` reaches `fn` as a function returning the (sound, rate) that `ClipStream.sound` gives."""
        stream = ClipStream(shape)
        try:
            if fill is not None:
                fill(stream.frames)
                stream.ready(shape[0])
            with self._lock:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_stand_aside,
                                                     initargs=(self.spare_cores, os.getpid()))
                stream.future = self._pool.submit(_on_stream, stream.name, shape, fn, *args, **kwargs)
        except BaseException:
            stream.abandon()
            raise
        return stream

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


def _stand_aside(spare_cores: int, parent: int = 0) -> None:
    """In the encoder's child: a lower priority, and the first `spare_cores` cores left to the parent."""
    global _PARENT
    _PARENT = parent
    if hasattr(os, "nice"):
        os.nice(10)
    if spare_cores and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= 2 * spare_cores:
            os.sched_setaffinity(0, cores[spare_cores:])


class _LateSound:
    """Stands for a clip's sound that is given after the encode starts (`ClipStream.sound`)."""


LATE_SOUND = _LateSound()
_HEADER = 128  # a stream's block: int64 [frames ready, sound state, channels, samples, rate, name length], the sound's block name, frames
_PENDING, _GIVEN, _SILENT, _ABANDONED = 0, 1, 2, -1
_PARENT = 0  # in the encoder's child: the process it encodes for (it stops waiting when that one is gone)


class ClipAbandoned(RuntimeError):
    """The process making a streamed clip's frames gave it up."""


class ClipStream:
    """One clip handed to the encoder's child through shared memory: `frames` to write into, `ready(n)` once the first
    n are there, `sound(audio, rate)` once the sound is known, `wait()` for the child's result (the blocks are released
    then), `abandon()` when the frames will never come (the child stops waiting and the blocks are released)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        from multiprocessing import shared_memory

        self.block = shared_memory.SharedMemory(create=True, size=_HEADER + max(1, math.prod(shape)))
        self.name = self.block.name
        self.header = np.ndarray((6,), np.int64, buffer=self.block.buf)
        self.header[:] = 0
        self.frames = np.ndarray(shape, np.uint8, buffer=self.block.buf, offset=_HEADER)
        self.sound_block: Any = None
        self.future: Any = None

    def ready(self, count: int) -> None:
        self.header[0] = count

    def sound(self, audio: np.ndarray | None, rate: int) -> None:
        """The clip's sound, (channels, samples) at `rate`, or None for silence."""
        from multiprocessing import shared_memory

        if audio is None:
            self.header[1] = _SILENT
            return
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1, np.shape(audio)[-1])
        self.sound_block = shared_memory.SharedMemory(create=True, size=max(1, audio.nbytes))
        np.ndarray(audio.shape, np.float32, buffer=self.sound_block.buf)[:] = audio
        name = self.sound_block.name.encode()
        if len(name) > _HEADER - 48:
            raise ValueError(f"shared memory name {self.sound_block.name!r} does not fit the stream's header")
        np.ndarray((len(name),), np.uint8, buffer=self.block.buf, offset=48)[:] = np.frombuffer(name, np.uint8)
        self.header[2:6] = (audio.shape[0], audio.shape[1], rate, len(name))
        self.header[1] = _GIVEN  # last: the child reads the rest once it sees this

    def wait(self) -> Any:
        try:
            return self.future.result()
        finally:
            self._release()

    def abandon(self) -> None:
        """Stop the child waiting for frames or sound, wait for it to give up, release the blocks."""
        self.header[1] = _ABANDONED
        try:
            if self.future is not None:
                self.future.exception()
        finally:
            self._release()

    def _release(self) -> None:
        if self.block is None:
            return
        del self.header, self.frames  # the block cannot close while a view of it lives
        for block in (self.block, self.sound_block):
            if block is not None:
                block.close()
                block.unlink()
        self.block = self.sound_block = None


class _Arriving:
    """In the encoder's child: a stream's frames, frame i handed out once the parent has written it."""

    def __init__(self, header: np.ndarray, frames: np.ndarray) -> None:
        self.header, self.frames = header, frames
        self.shape, self.ndim = frames.shape, frames.ndim  # what `write_clip` reads besides the frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        _until(lambda: self.header[0] > index, self.header)
        return self.frames[index]


def _until(done: Any, header: np.ndarray) -> None:
    """In the encoder's child: wait (1 ms polls) until `done()`, or raise if the parent abandoned the clip or is gone."""
    import time

    while not done():
        if header[1] == _ABANDONED or (_PARENT and os.getppid() != _PARENT):
            raise ClipAbandoned("the clip's frames or sound will not come")
        time.sleep(0.001)


class _Block:
    """In the encoder's child: a stream's block, its header and frames."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        from multiprocessing import shared_memory

        self.block = shared_memory.SharedMemory(name=name)
        self.header = np.ndarray((6,), np.int64, buffer=self.block.buf)
        self.frames = np.ndarray(shape, np.uint8, buffer=self.block.buf, offset=_HEADER)

    def late_sound(self) -> tuple[np.ndarray | None, int]:
        """The sound the parent gives with `ClipStream.sound`, once it does: (channels, samples) and its rate."""
        from multiprocessing import shared_memory

        header = self.header
        _until(lambda: header[1] != _PENDING, header)
        if header[1] == _SILENT:
            return None, 0
        channels, samples, rate, length = (int(v) for v in header[2:6])
        sound = shared_memory.SharedMemory(name=bytes(self.block.buf[48:48 + length]).decode())
        try:
            return np.ndarray((channels, samples), np.float32, buffer=sound.buf).copy(), rate
        finally:
            sound.close()

    def close(self) -> None:
        self.header = self.frames = None  # type: ignore[assignment]  # no view may outlive the block
        self.block.close()


def _on_stream(name: str, shape: tuple[int, ...], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """In the encoder's child: `fn` on the frames of stream block `name` (a plain array once all are there)."""
    block = _Block(name, shape)
    args = tuple(block.late_sound if isinstance(a, _LateSound) else a for a in args)
    kwargs = {k: block.late_sound if isinstance(v, _LateSound) else v for k, v in kwargs.items()}
    try:
        frames = block.frames if block.header[0] >= shape[0] else _Arriving(block.header, block.frames)
        result = fn(frames, *args, **kwargs)
        del frames, args, kwargs
        return result
    finally:
        block.close()


CLIP_AUDIO_RATE = 48000  # a clip's sound track


def write_clip(frames: np.ndarray, out: Path, fps: int, size: tuple[int, int], audio: Any, audio_rate: int,
               duration: float, *, crf: int = 20, preset: str = "veryfast", threads: int = 0, out_rate: int = CLIP_AUDIO_RATE) -> None:
    """H.264 clip with a FLAC sound track from uint8 frames scaled to `size`, exactly `duration` long. Frames are RGB
    (n, h, w, 3), or already the encoder's planar YUV 4:2:0 at `size` (n, height * 3 // 2, width: the Y plane, then U
    and V; see `diffusers_video.yuv420`), which skips the per-frame colour conversion on the CPU.

    Frames past the duration are dropped, the last one is held if there are too few; the audio
    (channels, samples) is resampled to `out_rate`, padded with silence or cut to the duration;
    None gives a silent stereo track (the render stage expects audio in every clip); a function gives
    (audio, rate) when the sound is known (`ClipStream.sound`), and is called beside the video's encode. The sound is
    lossless: a clip is an intermediate that the render encodes once more, and FLAC costs ~0.03 s where AAC cost
    ~0.5 s for 5 s of sound, time the last clip of a stage cannot hide. `threads`: x264's threads (0: its default,
    1.5 per core)."""
    import av

    count = max(1, math.ceil(round(duration * fps, 6)))
    width, height = size
    planar = frames.ndim == 3
    if planar and frames.shape[1:] != (height * 3 // 2, width):
        raise ValueError(f"YUV 4:2:0 frames of {frames.shape[2]}x{frames.shape[1]} do not hold a {width}x{height} picture")
    with av.open(str(out), "w", format="mp4") as container, ThreadPoolExecutor(1, thread_name_prefix="sound") as beside:
        video = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": preset, **({"threads": str(threads)} if threads else {})})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("flac", rate=out_rate, layout="stereo")
        # The sound is encoded on a thread beside the video (PyAV leaves the interpreter lock while it encodes) and
        # muxed once the video is. Its encoder is opened here first: the first video mux opens every stream not yet
        # open, and must not race the thread.
        sound.codec_context.open()
        sound_packets = beside.submit(_sound_packets, sound, audio, audio_rate, out_rate, round(count / fps * out_rate))
        for index in range(count):
            frame = np.ascontiguousarray(frames[min(index, len(frames) - 1)])
            if planar:
                picture = av.VideoFrame.from_ndarray(frame, format="yuv420p")
            else:
                picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
                picture = picture.reformat(width=width, height=height, format="yuv420p", interpolation="BICUBIC")
            picture.pts = index
            if index == count - 1:  # a keyframe: the next beat's sfx clip starts from it (`last_frame` decodes only it)
                picture.pict_type = av.video.frame.PictureType.I
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
        container.mux(sound_packets.result())


def _sound_packets(sound: Any, audio: Any, audio_rate: int, out_rate: int, length: int) -> list[Any]:
    """Every packet of the clip's sound: (channels, samples) at `audio_rate` (None: silence; a function: the two once
    known) resampled to `out_rate`, padded with silence or cut to `length` samples, encoded by `sound` (the
    container's FLAC stream) as 16-bit samples."""
    import av

    if callable(audio):
        audio, audio_rate = audio()
    samples = np.zeros((2, 0), dtype=np.float32) if audio is None else np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio
    if audio is not None and audio_rate != out_rate and samples.shape[1]:
        source = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.astype(np.float32)), format="fltp", layout="stereo")
        source.sample_rate = audio_rate
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=out_rate)
        samples = np.concatenate([f.to_ndarray() for f in [*resampler.resample(source), *resampler.resample(None)]], axis=1)
    samples = fit_length(samples.astype(np.float32), length)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).T  # (samples, 2): s16 is interleaved
    step = sound.codec_context.frame_size or 4608
    packets = []
    for start in range(0, pcm.shape[0], step):
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[start:start + step]).reshape(1, -1), format="s16", layout="stereo")
        chunk.sample_rate, chunk.pts = out_rate, start
        packets += sound.encode(chunk)
    return packets + sound.encode(None)
