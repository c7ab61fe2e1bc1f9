"""Reading media facts (durations, streams, audio samples) with PyAV."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

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
    import av

    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


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
