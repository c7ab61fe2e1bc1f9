"""The LTX-2 video backend on a tiny random-weight LTX-2 built in the test, saved and loaded through
`from_pretrained`, run by the product's video stage on the CPU: clip lengths, the audio policy per
renderer, and that a2v really feeds the speech latents (held clean) to the transformer."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import tiny_models  # noqa: E402

from storyboard.backends.ltx2_video import frame_count, log_mel, retime  # noqa: E402
from storyboard.media import fit_length, last_frame, load_audio, probe  # noqa: E402
from storyboard.pipeline import create_run, run_stages  # noqa: E402
from storyboard.profiles import resolve_config  # noqa: E402

from helpers import changed, edit_plan, media_hashes  # noqa: E402

IDEA = "A cat who wants to be a judge"


def test_frame_counts_are_8k_plus_1_and_never_shorter() -> None:
    for seconds in (0.1, 1.0, 3.49, 4.0, 5.02, 9.04):
        frames = frame_count(seconds, 24)
        assert (frames - 1) % 8 == 0 and frames >= seconds * 24 and frames - 8 < max(seconds * 24, 9)
    assert frame_count(5.0, 24) == 121 and frame_count(9.0, 24) == 217
    assert len(retime(np.zeros((49, 1, 1, 3)), 24, 30)) == 61 and len(retime(np.zeros((49, 1, 1, 3)), 24, 24)) == 49


@pytest.fixture(scope="module")
def ltx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.ltx2(tmp_path_factory.mktemp("tiny") / "ltx2")


def envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    window = rate // 50
    mono = samples.mean(axis=0)
    usable = len(mono) - len(mono) % window
    return np.sqrt((mono[:usable].reshape(-1, window) ** 2).mean(axis=1))


def test_ltx2_clips_audio_policy_and_frozen_speech_latents(ltx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from diffusers import LTX2DFRPipeline, LTX2ImageToVideoPipeline, LTX2VideoTransformer3DModel

    seen: list[dict] = []  # every transformer step: which entry point, the audio stream and its timestep
    pipes: list[dict] = []
    real_forward = LTX2VideoTransformer3DModel.forward

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        step = {"pipe": pipes[-1]["class"], "audio": kwargs["audio_hidden_states"].detach().clone(),
                "audio_timestep": kwargs["audio_timestep"].detach().clone()}
        seen.append(step)
        pipes[-1]["steps"].append(step)
        return real_forward(self, *args, **kwargs)

    def spy(cls: type) -> None:
        real = cls.__call__

        def call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            pipes.append({"class": cls.__name__, "pipe": self, "steps": [], **kwargs})
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", call)

    monkeypatch.setattr(LTX2VideoTransformer3DModel, "forward", forward)
    spy(LTX2ImageToVideoPipeline)
    spy(LTX2DFRPipeline)
    import threading

    import storyboard.backends.ltx2_video as ltx2_video

    decoded_on: list[str] = []  # threads that decoded a speech take for an a2v clip
    real_load_audio = ltx2_video.load_audio

    def load_audio_spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        decoded_on.append(threading.current_thread().name)
        return real_load_audio(*args, **kwargs)

    monkeypatch.setattr(ltx2_video, "load_audio", load_audio_spy)
    config = resolve_config("offline", {"video": {"backend": "ltx2", "model": str(ltx), "device": "cpu", "max_sequence_length": 32,
                                                  "presets": {"distilled": {"long_side": 64}}, "overlap_speech": True}})
    root = create_run(IDEA, "drama10", config, tmp_path)
    summary = run_stages(root, config, stages=("visual", "video"))
    assert summary.status == "ok", summary
    assert summary.calls["video.load"] == 1 and summary.calls["video.animate"] == 11
    plan = json.loads((root / "plan.json").read_text())
    manifest = json.loads((root / "run.json").read_text())
    stage = manifest["stages"]["video"]
    assert stage["load_s"] >= 0 and stage["prompts_s"] >= 0 and "peak_vram_gib" in stage
    # Each clip's turn on the model is timed: 11 turns, the frames' conversion within them, and the idle time between
    # turns (on this CPU the encodes are slower than the tiny model, so the gaps can be long).
    assert stage["clips"] == 11 and stage["gpu_s"] > 0 and 0 <= stage["convert_s"] <= stage["gpu_s"] and stage["gaps_s"] >= 0

    renderers = ["a2v"] + [b["renderer"] for b in plan["beats"]]
    assert {"a2v", "i2v", "sfx"} <= set(renderers)
    # Two clips are in flight at once (one on the model, one encoding): calls are matched to beats by their seed.
    seeds = {manifest["artifacts"][k]["inputs"]["seed"]: int(k.split("_")[1]) for k in manifest["artifacts"] if k.startswith("clips/")}
    calls = {seeds[p["generator"].initial_seed()]: p for p in pipes}
    # sfx clips wait for the clip they continue from: they are made after it.
    for number, renderer in enumerate(renderers):
        if renderer == "sfx":
            position = {id(p): i for i, p in enumerate(pipes)}
            assert position[id(calls[number])] > position[id(calls[number - 1])]
    assert [calls[n]["class"] for n in range(11)] == ["LTX2DFRPipeline" if r == "a2v" else "LTX2ImageToVideoPipeline" for r in renderers]
    for number, renderer in enumerate(renderers):
        beat_type = "hook" if number == 0 else plan["beats"][number - 1]["type"]
        clip = root / "clips" / f"clip_{number:02d}_{beat_type}.mp4"
        inputs = manifest["artifacts"][f"clips/{clip.name}"]["inputs"]
        info = probe(clip)
        call = calls[number]
        # Length: the clip lasts exactly its planned/speech length; the model made 8k+1 frames covering it.
        assert abs(info.video_duration - inputs["duration"]) < 1.01 / 24 and abs(info.audio_duration - inputs["duration"]) < 0.03
        assert (info.width, info.height) == (plan["width"], plan["height"])
        assert (call["num_frames"] - 1) % 8 == 0 and call["num_frames"] >= inputs["duration"] * 24
        assert call["width"] % 32 == 0 and call["height"] % 32 == 0
        sound = load_audio(clip, 16000)
        if renderer == "i2v":  # the generated audio is dropped
            assert np.abs(sound).max() < 1e-3, number
        elif renderer == "a2v":  # the clip carries the TTS take: same loudness envelope
            speech = fit_length(load_audio(root / "audio" / f"beat_{number:02d}.wav", 16000), sound.shape[1])
            a, b = envelope(sound, 16000), envelope(speech, 16000)
            assert np.corrcoef(a, b)[0, 1] > 0.95, number
        else:  # sfx: generated audio kept, from the previous clip's last frame
            assert np.abs(sound).max() > 1e-3
            previous = root / "clips" / f"clip_{number - 1:02d}_{'hook' if number == 1 else plan['beats'][number - 2]['type']}.mp4"
            expected = last_frame(previous).convert("RGB").resize(call["image"].size, Image.Resampling.LANCZOS)
            assert np.array_equal(np.asarray(call["image"]), np.asarray(expected))

    # a2v: the transformer sees the speech's own latents, clean (timestep 0) at every step, never a noise draw.
    for number, call in calls.items():
        if call["class"] != "LTX2DFRPipeline":
            continue
        pipe = call["pipe"]
        vae = pipe.audio_vae
        frames = call["num_frames"]
        speech = fit_length(load_audio(root / "audio" / f"beat_{number:02d}.wav", vae.config.sample_rate), round(frames / 24 * vae.config.sample_rate))
        with torch.no_grad():
            latents = vae.encode(log_mel(speech, vae.config.sample_rate, vae.config.mel_bins, vae.config.mel_hop_length)).latent_dist.mode()
        assert torch.equal(call["audio_latents"], latents)
        expected = pipe._normalize_audio_latents(pipe._pack_audio_latents(latents), vae.latents_mean, vae.latents_std)
        assert len(call["steps"]) == 8  # the distilled schedule
        for step in call["steps"]:
            assert torch.allclose(step["audio"].float(), expected.float(), atol=1e-5)
            assert torch.count_nonzero(step["audio_timestep"]) == 0
    # The takes are decoded and turned into the VAE's input before each clip's turn on the model, not in it (the GPU
    # would wait on that CPU work): never on the backend's GPU thread.
    assert len(decoded_on) == 2 * renderers.count("a2v") and not [t for t in decoded_on if t.startswith("ltx2-gpu")], decoded_on
    # i2v and sfx steps denoise their own audio stream (nonzero timesteps).
    assert all(torch.count_nonzero(s["audio_timestep"]) > 0 for s in seen if s["pipe"] == "LTX2ImageToVideoPipeline")

    # The video model loaded and encoded its prompts beside the speech, once.
    assert stage["video_load_overlapped_s"] > 0 and stage["video_load_s"] >= 0

    # Re-running changes nothing: every clip is cached.
    again = run_stages(root, config, stages=("video",))
    assert again.status == "up to date" and again.calls.get("video.animate", 0) == 0 and again.calls.get("video.load", 0) == 0

    # A new line re-voices its beat; the early load encodes that clip's prompt and those of the sfx clips that continue
    # from it, which are redone too (each from the clip before): one load, nothing else touched.
    speaker = next(n for n in range(1, 11) if renderers[n] == "a2v" and n < 10 and renderers[n + 1] == "sfx")
    chained = [n for n in range(speaker + 1, 11) if all(r == "sfx" for r in renderers[speaker + 1 : n + 1])]
    before = media_hashes(root)
    edit_plan(root, speaker, line="Objection! The fish was already missing when I got here.")
    redo = run_stages(root, config, stages=("video",))
    assert redo.status == "ok" and redo.calls["video.load"] == 1 and redo.calls["video.animate"] == 1 + len(chained)
    clip = lambda n: f"clips/clip_{n:02d}_{plan['beats'][n - 1]['type']}.mp4"  # noqa: E731
    assert changed(before, media_hashes(root)) == {f"audio/beat_{speaker:02d}.wav", clip(speaker), *map(clip, chained)}
    assert json.loads((root / "run.json").read_text())["stages"]["video"]["video_load_overlapped_s"] > 0
    # The default: the model loads after the speech, the clips' prompts encoded then.
    before = media_hashes(root)
    edit_plan(root, speaker, line="Objection! Nobody saw the fish leave the kitchen.")
    config["video"]["overlap_speech"] = False
    redo = run_stages(root, config, stages=("video",))
    assert redo.status == "ok" and redo.calls["video.load"] == 1 and redo.calls["video.animate"] == 1 + len(chained)
    assert changed(before, media_hashes(root)) == {f"audio/beat_{speaker:02d}.wav", clip(speaker), *map(clip, chained)}
    stage = json.loads((root / "run.json").read_text())["stages"]["video"]
    assert "video_load_overlapped_s" not in stage and stage["prompts_s"] >= 0


def test_second_entry_point_shares_weights_and_keeps_fp8_and_dtype(ltx: Path, tmp_path: Path) -> None:
    """The a2v pipeline reuses the loaded components; nothing is recast (diffusers' from_pipe would make them float32)."""
    from storyboard.backends.ltx2_video import LTX2Video

    with LTX2Video({"model": str(ltx), "device": "cpu", "dtype": "bfloat16", "fp8": True}) as backend:
        assert backend.a2v_pipe.transformer is backend.pipe.transformer and backend.a2v_pipe.vae is backend.pipe.vae
        assert {str(p.dtype) for p in backend.pipe.transformer.parameters()} == {"torch.float8_e4m3fn", "torch.bfloat16"}
        assert {str(p.dtype) for p in backend.pipe.vae.parameters()} == {"torch.bfloat16"}
        assert backend.a2v_pipe.scheduler is not backend.pipe.scheduler


def test_ltx_video_animates_every_renderer_without_sound_of_its_own(tmp_path: Path) -> None:
    """LTX-Video, the lighter alternative: image-to-video for all three renderers; a2v clips carry the take, the
    others are silent; sfx continues from the previous clip's last frame."""
    import wave

    from diffusers import LTXImageToVideoPipeline

    from storyboard.backends import ClipRequest
    from storyboard.backends.diffusers_video import LTXVideo

    model = tiny_models.ltx_video(tmp_path / "ltx-video")
    Image.new("RGB", (108, 192), (200, 100, 50)).save(tmp_path / "beat.png")
    rate = 22050
    t = np.arange(int(rate * 1.2)) / rate
    with wave.open(str(tmp_path / "line.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((0.3 * np.sin(2 * np.pi * 220 * t) * (t < 1.0) * 32767).astype(np.int16).tobytes())
    images = []
    real = LTXImageToVideoPipeline.__call__

    @functools.wraps(real)  # keeps the signature the backend reads
    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        images.append(kwargs["image"])
        return real(self, *args, **kwargs)

    LTXImageToVideoPipeline.__call__ = spy
    try:
        with LTXVideo({"model": str(model), "device": "cpu", "presets": {"distilled": {"long_side": 64}}}) as backend:
            for number, renderer in enumerate(["i2v", "a2v", "sfx"], 1):
                request = ClipRequest(number=number, renderer=renderer, image=tmp_path / "beat.png",
                                      audio=tmp_path / "line.wav" if renderer == "a2v" else None, duration=1.5, width=108, height=192,
                                      fps=24, seed=number, prompt="a cat judge", previous_clip=tmp_path / "clip_2.mp4" if renderer == "sfx" else None)
                backend.animate(request, tmp_path / f"clip_{number}.mp4")
    finally:
        LTXImageToVideoPipeline.__call__ = real
    for number in (1, 2, 3):
        info = probe(tmp_path / f"clip_{number}.mp4")
        assert abs(info.video_duration - 1.5) < 1.01 / 24 and abs(info.audio_duration - 1.5) < 0.03 and (info.width, info.height) == (108, 192)
    assert np.abs(load_audio(tmp_path / "clip_1.mp4", 16000)).max() < 1e-3
    assert np.abs(load_audio(tmp_path / "clip_3.mp4", 16000)).max() < 1e-3
    speech = load_audio(tmp_path / "clip_2.mp4", 16000)
    assert np.abs(speech[:, : 16000 * 9 // 10]).mean() > 0.05 and np.abs(speech[:, 16000 * 21 // 20:]).max() < 0.02  # the take, then silence
    expected = last_frame(tmp_path / "clip_2.mp4").convert("RGB").resize(images[2].size, Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(images[2]), np.asarray(expected))


def test_ltx2_two_stage_upsampler(ltx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an upsampler, a clip is made at half size, its latents upsampled 2x, then refined at full size."""
    from diffusers import LTX2ImageToVideoPipeline, LTX2LatentUpsamplePipeline

    from storyboard.backends import ClipRequest
    from storyboard.backends.ltx2_video import LTX2Video

    calls: list[tuple[str, dict]] = []
    for cls in (LTX2ImageToVideoPipeline, LTX2LatentUpsamplePipeline):
        real = cls.__call__

        def spy(self, *args, __real=real, __name=cls.__name__, **kwargs):  # type: ignore[no-untyped-def]
            out = __real(self, *args, **kwargs)
            calls.append((__name, {**kwargs, "out": out.frames}))
            return out

        monkeypatch.setattr(cls, "__call__", spy)
    upsampler = tiny_models.ltx2_upsampler(tmp_path / "upsampler")
    Image.new("RGB", (108, 192), (90, 140, 200)).save(tmp_path / "beat.png")
    settings = {"model": str(ltx), "device": "cpu", "max_sequence_length": 32, "upsampler": str(upsampler),
                "presets": {"distilled": {"long_side": 128}}}
    with LTX2Video(settings) as backend:
        request = ClipRequest(number=1, renderer="i2v", image=tmp_path / "beat.png", audio=None, duration=1.5, width=108, height=192,
                              fps=24, seed=5, prompt="a cat judge")
        backend.prepare([request.prompt])
        backend.animate(request, tmp_path / "clip.mp4")
    assert [name for name, _ in calls] == ["LTX2ImageToVideoPipeline", "LTX2LatentUpsamplePipeline", "LTX2ImageToVideoPipeline"]
    first, up, refine = (kwargs for _, kwargs in calls)
    assert (refine["width"], refine["height"]) == (64, 128) and (first["width"], first["height"]) == (32, 64)
    assert first["output_type"] == "latent" and up["latents"] is first["out"]
    assert refine["latents"] is up["out"] and refine["latents"].shape[-2:] == (2 * first["out"].shape[-2], 2 * first["out"].shape[-1])
    assert refine["num_inference_steps"] == 3 and refine["audio_latents"] is not None
    info = probe(tmp_path / "clip.mp4")
    assert (info.width, info.height) == (108, 192) and abs(info.video_duration - 1.5) < 1.01 / 24
    assert "upsampler" in LTX2Video(settings).identity()


def test_wan_image_to_video_backend(tmp_path: Path) -> None:
    """Wan (2.2 TI2V layout): loaded through from_pretrained, 4k+1 frames, sizes in the model's multiple."""
    from diffusers import WanImageToVideoPipeline

    from storyboard.backends import ClipRequest
    from storyboard.backends.diffusers_video import WanVideo

    model = tiny_models.wan(tmp_path / "wan")
    Image.new("RGB", (108, 192), (20, 160, 90)).save(tmp_path / "beat.png")
    seen = []
    real = WanImageToVideoPipeline.__call__

    @functools.wraps(real)
    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return real(self, *args, **kwargs)

    WanImageToVideoPipeline.__call__ = spy
    try:
        with WanVideo({"model": str(model), "device": "cpu", "quality": "draft", "presets": {"draft": {"steps": 2, "long_side": 64}}}) as backend:
            assert backend.multiple == 32 and backend.temporal() == 4
            request = ClipRequest(number=1, renderer="i2v", image=tmp_path / "beat.png", audio=None, duration=0.9, width=108, height=192,
                                  fps=24, seed=1, prompt="a cat judge")
            backend.animate(request, tmp_path / "clip.mp4")
    finally:
        WanImageToVideoPipeline.__call__ = real
    call = seen[0]
    assert (call["num_frames"] - 1) % 4 == 0 and call["num_frames"] >= 0.9 * 24 and "frame_rate" not in call
    assert call["width"] % 32 == 0 and call["height"] % 32 == 0 and call["num_inference_steps"] == 2
    info = probe(tmp_path / "clip.mp4")
    assert (info.width, info.height) == (108, 192) and abs(info.video_duration - 0.9) < 1.01 / 24


def test_video_backend_problems_are_named_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing checkpoints (model and upsampler) name the fetch command; a bad quality names the choices; a checkpoint
    of the wrong family is refused with its class named."""
    from storyboard.backends.diffusers_video import LTXVideo
    from storyboard.backends.ltx2_video import LTX2Video
    from storyboard.errors import PreflightError
    from storyboard.preflight import check_backends

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    config = resolve_config("gpu")
    video = next(c for c in check_backends(config) if c.name == "video")
    assert not video.ok and "hf download Lightricks/LTX-2" in video.detail
    upsampler = LTX2Video({"model": "Lightricks/LTX-2", "upsampler": "Lightricks/LTX-2-upsampler"}).missing_models()
    assert any("hf download Lightricks/LTX-2-upsampler" in m for m in upsampler)
    bad = next(c for c in check_backends(resolve_config("offline", {"video": {"backend": "ltx2", "quality": "best"}})) if c.name == "video")
    assert not bad.ok and "video.quality: 'best'; choose distilled or full" in bad.detail
    wrong = tiny_models.wan(tmp_path / "wan")
    with pytest.raises(PreflightError, match="WanImageToVideoPipeline checkpoint, not one for the ltx-video backend"):
        LTXVideo({"model": str(wrong), "device": "cpu"}).__enter__()
    with pytest.raises(PreflightError, match="not LTX-2"):
        LTX2Video({"model": str(wrong), "device": "cpu"}).__enter__()


def test_write_clip_holds_the_last_frame_and_cuts_extra_frames(tmp_path: Path) -> None:
    """Exactly the asked duration whatever the model returned: too few frames hold the last one, extra are dropped;
    audio longer than the clip is cut, shorter is padded with silence."""
    from storyboard.media import write_clip

    frames = np.zeros((5, 64, 32, 3), dtype=np.uint8)
    frames[-1] = 255
    long_audio = np.full((1, 16000 * 3), 0.2, dtype=np.float32)
    write_clip(frames, tmp_path / "short.mp4", 24, (32, 64), long_audio, 16000, 1.0)
    info = probe(tmp_path / "short.mp4")
    assert abs(info.video_duration - 1.0) < 1e-3 and abs(info.audio_duration - 1.0) < 0.03 and info.frames == 24
    assert np.asarray(last_frame(tmp_path / "short.mp4")).mean() > 200  # the last model frame held to the end
    many = np.zeros((100, 64, 32, 3), dtype=np.uint8)
    write_clip(many, tmp_path / "long.mp4", 24, (32, 64), np.full((2, 1600), 0.2, dtype=np.float32), 16000, 2.0)
    info = probe(tmp_path / "long.mp4")
    assert info.frames == 48 and abs(info.audio_duration - 2.0) < 0.03
    sound = load_audio(tmp_path / "long.mp4", 16000)
    assert np.abs(sound[:, 16000:]).max() < 1e-3  # padded with silence after the 0.1 s of audio


def test_a_clips_last_frame_is_a_keyframe_and_last_frame_reads_any_clip(tmp_path: Path) -> None:
    """write_clip makes the last frame a keyframe, so the sfx beat after it decodes one frame; last_frame still finds
    the true last frame of a clip whose only keyframe is its first."""
    import av

    from storyboard.media import write_clip

    frames = np.repeat(np.linspace(0, 120, 30, dtype=np.uint8)[:, None, None, None], 64 * 32 * 3, axis=1).reshape(30, 64, 32, 3)
    frames[-1] = 250
    write_clip(frames, tmp_path / "ours.mp4", 24, (32, 64), None, 48000, 30 / 24, crf=16, preset="ultrafast")
    with av.open(str(tmp_path / "ours.mp4")) as container:
        keys = [packet.is_keyframe for packet in container.demux(video=0) if packet.size]
    assert len(keys) == 30 and keys[0] and keys[-1] and not any(keys[1:-1])
    assert np.asarray(last_frame(tmp_path / "ours.mp4")).mean() > 240
    with av.open(str(tmp_path / "theirs.mp4"), "w", format="mp4") as container:  # one keyframe, at the start
        stream = container.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 32, 64, "yuv420p"
        for index, picture in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(tmp_path / "theirs.mp4")) as container:
        assert sum(packet.is_keyframe for packet in container.demux(video=0) if packet.size) == 1
    assert np.asarray(last_frame(tmp_path / "theirs.mp4")).mean() > 240


def test_encoder_child_reads_the_frames_from_shared_memory_and_releases_it(tmp_path: Path) -> None:
    """The frames written by the caller are the clip's (encoded in the child); the shared block is gone afterwards,
    also when filling it fails; an error in the child reaches the caller."""
    from storyboard.media import Encoder, write_clip

    before = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    encoder = Encoder()
    try:
        def fill(into: np.ndarray) -> None:
            into[:] = 40
            into[12:] = 230

        encoder.submit_frames((24, 64, 32, 3), fill, write_clip, tmp_path / "a.mp4", 24, (32, 64), None, 48000, 1.0)()
        assert probe(tmp_path / "a.mp4").frames == 24
        assert np.asarray(last_frame(tmp_path / "a.mp4")).mean() > 200
        with pytest.raises(RuntimeError, match="no GPU"):
            encoder.submit_frames((2, 8, 8, 3), lambda into: (_ for _ in ()).throw(RuntimeError("no GPU")), write_clip, tmp_path / "b.mp4",
                                  24, (8, 8), None, 48000, 1.0)
        with pytest.raises(Exception, match="libx264|width|height|Invalid|dimension"):  # odd sizes cannot be yuv420p
            encoder.submit_frames((2, 7, 7, 3), lambda into: None, write_clip, tmp_path / "c.mp4", 24, (7, 7), None, 48000, 1.0)()
    finally:
        encoder.close()
    assert not (tmp_path / "b.mp4").exists()
    if Path("/dev/shm").is_dir():
        assert set(Path("/dev/shm").iterdir()) <= before


def _first_then_last(frames: np.ndarray, marker: Path) -> tuple[int, int]:
    """In the encoder's child: frame 0, a marker saying it was read, then the last frame."""
    first = int(frames[0].max())
    marker.write_text("read the first frame")
    return first, int(frames[len(frames) - 1].max())


def test_a_streamed_clip_is_encoded_as_its_frames_arrive_its_sound_comes_late_and_it_can_be_abandoned(tmp_path: Path) -> None:
    """The child reads frame i once the parent says it is there, not before; the sound can follow the frames; a clip
    given up stops the child waiting, and every shared block is gone afterwards."""
    import time

    from storyboard.media import LATE_SOUND, ClipAbandoned, Encoder, write_clip

    before = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    encoder = Encoder()
    try:
        stream = encoder.stream((4, 8, 8), _first_then_last, tmp_path / "marker")
        stream.frames[0] = 7
        stream.ready(1)
        deadline = time.monotonic() + 120  # the child starts (spawn) on first use
        while not (tmp_path / "marker").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert (tmp_path / "marker").exists() and not stream.future.done()  # it waits for the last frame
        stream.frames[1:] = 9
        stream.ready(4)
        assert stream.wait() == (7, 9)

        out = tmp_path / "late.mp4"
        stream = encoder.stream((24, 96, 64), write_clip, out, 24, (64, 64), LATE_SOUND, 0, 1.0, crf=16, preset="ultrafast")
        stream.frames[:] = 128
        stream.ready(24)
        rate = 24000
        tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)).astype(np.float32)[None]  # half the clip
        stream.sound(tone, rate)
        stream.wait()
        info = probe(out)
        assert (info.audio_codec, info.sample_rate, info.channels, info.frames) == ("flac", 48000, 2, 24)
        assert abs(info.audio_duration - 1.0) < 1e-3 and abs(info.video_duration - 1.0) < 1e-3
        sound = load_audio(out, 48000)
        assert np.abs(sound[:, 1000:23000]).max() > 0.45 and np.abs(sound[:, 25000:]).max() < 1e-4  # the tone, then silence

        stream = encoder.stream((4, 8, 8), _first_then_last, tmp_path / "marker2")
        stream.abandon()
        assert isinstance(stream.future.exception(), ClipAbandoned)
        assert encoder.submit_frames((2, 8, 8), lambda into: into.fill(3), _first_then_last, tmp_path / "marker3")() == (3, 3)
    finally:
        encoder.close()
    if Path("/dev/shm").is_dir():
        assert set(Path("/dev/shm").iterdir()) <= before


def test_ltx2_decoded_tiles_go_to_the_encoder_as_they_come_and_give_the_pipelines_own_clip(ltx: Path, tmp_path: Path,
                                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With temporal VAE tiles, each tile's final frames are handed over as soon as it is decoded and blended (the
    decode's result is diffusers' own, bit for bit), reach the host in runs while the pipeline call still runs, and
    the clip shows exactly the frames the pipeline returned."""
    import av
    import torch
    from diffusers import AutoencoderKLLTX2Video, LTX2ImageToVideoPipeline

    import storyboard.backends.diffusers_video as video
    from storyboard.backends import ClipRequest
    from storyboard.backends.ltx2_video import LTX2Video
    from storyboard.media import write_clip

    vae = AutoencoderKLLTX2Video.from_pretrained(ltx / "vae")
    vae.enable_tiling(tile_sample_min_num_frames=16, tile_sample_stride_num_frames=8)
    vae.use_framewise_decoding = True
    z = torch.randn(1, 4, 6, 4, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vae.decode(z).sample
        decoder_calls, emitted = [], []
        real_forward = vae.decoder.forward
        vae.decoder.forward = lambda *a, **k: decoder_calls.append(1) or real_forward(*a, **k)
        with video.streamed_decode(vae, lambda part: emitted.append((len(decoder_calls), part.clone()))):
            got = vae.decode(z).sample
        del vae.decoder.forward
    assert "_temporal_tiled_decode" not in vars(vae)  # the hook is gone after the call
    assert torch.equal(got, expected) and expected.shape[2] == 41
    assert torch.equal(torch.cat([part for _, part in emitted], dim=2), expected)
    assert [calls for calls, _ in emitted] == list(range(1, len(emitted) + 1)) and len(emitted) == 5  # one run per tile, at once

    returned, runs = [], []
    real_call, real_to_host = LTX2ImageToVideoPipeline.__call__, video.Outgoing._to_host

    def call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_call(self, *args, **kwargs)
        returned.append(out.frames[0].clone())
        return out

    def to_host(self, pixels, ready, first, last):  # type: ignore[no-untyped-def]
        runs.append((first, last, bool(returned)))
        real_to_host(self, pixels, ready, first, last)

    monkeypatch.setattr(LTX2ImageToVideoPipeline, "__call__", call)
    monkeypatch.setattr(video.Outgoing, "_to_host", to_host)
    Image.new("RGB", (108, 192), (90, 140, 200)).save(tmp_path / "beat.png")
    settings = {"model": str(ltx), "device": "cpu", "max_sequence_length": 32, "vae_tiling": True, "vae_temporal_tile_frames": 16,
                "presets": {"distilled": {"long_side": 128}}}
    request = ClipRequest(number=1, renderer="i2v", image=tmp_path / "beat.png", audio=None, duration=1.5, width=108, height=192,
                          fps=24, seed=5, prompt="a cat judge")
    with LTX2Video(settings) as backend:
        backend.prepare([request.prompt])
        backend.animate(request, tmp_path / "clip.mp4")
        x264 = backend.x264()
    assert len(returned) == 1 and returned[0].shape[0] == 41
    assert [(a, b) for a, b, _ in runs] == [(0, 9), (9, 17), (17, 25), (25, 33), (33, 41)]
    assert not runs[0][2]  # the first run left before the pipeline call returned
    reference = tmp_path / "reference.mp4"
    write_clip(video.yuv420(returned[0], (108, 192)).numpy(), reference, 24, (108, 192), None, 48000, 1.5, **x264)

    def frames(path: Path) -> np.ndarray:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])

    assert np.array_equal(frames(tmp_path / "clip.mp4"), frames(reference))


def test_a_decode_failing_after_frames_were_streamed_leaves_no_clip_block_or_waiting_encoder(ltx: Path, tmp_path: Path,
                                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The VAE fails on its third tile, after two tiles' frames went to the encoder's child: the error reaches the
    caller, the child stops waiting, no shared block is left, and the next clip is made as usual."""
    from storyboard.backends import ClipRequest
    from storyboard.backends.ltx2_video import LTX2Video

    tiles: list[int] = []
    Image.new("RGB", (108, 192), (90, 140, 200)).save(tmp_path / "beat.png")
    settings = {"model": str(ltx), "device": "cpu", "max_sequence_length": 32, "vae_tiling": True, "vae_temporal_tile_frames": 16,
                "presets": {"distilled": {"long_side": 128}}}
    request = ClipRequest(number=1, renderer="i2v", image=tmp_path / "beat.png", audio=None, duration=1.5, width=108, height=192,
                          fps=24, seed=5, prompt="a cat judge")
    blocks = lambda: set(Path("/dev/shm").glob("psm_*")) if Path("/dev/shm").is_dir() else set()  # noqa: E731 - the shared memory blocks
    before = blocks()
    with LTX2Video(settings) as backend:
        backend.prepare([request.prompt])
        decoder = backend.pipe.vae.decoder
        real_forward = decoder.forward

        def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
            tiles.append(1)
            if len(tiles) == 3:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return real_forward(*args, **kwargs)

        monkeypatch.setattr(decoder, "forward", failing)
        with pytest.raises(RuntimeError, match="illegal memory access"):
            backend.animate(request, tmp_path / "failed.mp4")
        assert len(tiles) == 3 and blocks() <= before
        backend.animate(request, tmp_path / "clip.mp4")
    assert probe(tmp_path / "clip.mp4").frames == 36


def test_frames_reach_the_host_while_the_next_clip_is_in_the_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip's turn on the model ends once its frames are quantised: their copy to the host (and encode) runs beside
    the next clip's pipeline call. Every call runs on the backend's one GPU thread, whichever worker asked. The clips
    are the same as those made one at a time."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from diffusers import LTXImageToVideoPipeline

    import storyboard.backends.diffusers_video as video
    from storyboard.backends import ClipRequest

    model = tiny_models.ltx_video(tmp_path / "ltx-video")
    Image.new("RGB", (64, 96), (30, 160, 90)).save(tmp_path / "beat.png")
    calls: list[int] = []
    threads: set[str] = set()
    second = threading.Event()
    real_call, real_copy = LTXImageToVideoPipeline.__call__, video.to_host

    @functools.wraps(real_call)
    def call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["generator"].initial_seed())
        threads.add(threading.current_thread().name)
        if len(calls) == 2:
            second.set()
        return real_call(self, *args, **kwargs)

    def copy(frames, into, ready=None):  # type: ignore[no-untyped-def]
        if len(calls) == 1:  # the first clip's copy: the second clip must get the model meanwhile
            assert second.wait(30), "the next clip waited for the copy"
        real_copy(frames, into, ready)

    monkeypatch.setattr(LTXImageToVideoPipeline, "__call__", call)
    monkeypatch.setattr(video, "to_host", copy)

    def request(number: int) -> ClipRequest:
        return ClipRequest(number=number, renderer="i2v", image=tmp_path / "beat.png", audio=None, duration=1.0, width=64, height=96,
                           fps=24, seed=number, prompt="a cat judge")

    with video.LTXVideo({"model": str(model), "device": "cpu", "presets": {"distilled": {"long_side": 96}}}) as backend:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: backend.animate(request(n), tmp_path / f"beside_{n}.mp4"), (1, 2)))
        figures = backend.gpu_gaps()
        assert figures["clips"] == 2 and figures["convert_s"] >= 0
        assert len(threads) == 1 and next(iter(threads)).startswith("ltx-video-gpu")
        for number in (1, 2):
            backend.animate(request(number), tmp_path / f"in_turn_{number}.mp4")

    def frames(path: Path) -> np.ndarray:
        import av

        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    for number in (1, 2):
        assert np.array_equal(frames(tmp_path / f"beside_{number}.mp4"), frames(tmp_path / f"in_turn_{number}.mp4"))


def test_quantise_scales_and_rounds_where_the_frames_are() -> None:
    import torch

    from storyboard.backends.diffusers_video import quantise, to_host

    video = torch.rand(5, 3, 8, 6)
    video[0, 0, 0, 0], video[1, 1, 2, 3] = 1.7, -0.2  # out of range: clamped
    same = quantise(video, (6, 8), chunk=2)
    assert same.dtype == torch.uint8 and same.shape == (5, 8, 6, 3)
    expected = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(same, expected) and same[0, 0, 0, 0] == 255 and same[1, 2, 3, 1] == 0
    host = np.zeros((5, 16, 12, 3), np.uint8)
    to_host(quantise(video, (12, 16), chunk=3), host)
    assert host.any() and np.abs(host[:, ::2, ::2].astype(int) - expected.numpy()).mean() < 40  # the same picture, twice the size


def test_yuv420_frames_match_the_encoders_own_conversion_and_encode_to_the_same_picture(tmp_path: Path) -> None:
    """Frames converted to planar YUV 4:2:0 where they are (the GPU) give libswscale's BT.601 limited-range luma to
    within rounding and its chroma to within a level on smooth pictures; a clip written from them decodes to the
    picture the RGB path gives; a plane layout that does not fit the size, and odd sizes, are refused."""
    import av
    import torch

    from storyboard.backends.diffusers_video import quantise, yuv420
    from storyboard.media import write_clip

    torch.manual_seed(3)
    video = torch.nn.functional.interpolate(torch.rand(6, 3, 6, 4), size=(48, 32), mode="bilinear")  # smooth colour fields
    video[1] = 1.0  # white: luma 235, chroma 128 in limited range
    planar, rgb = yuv420(video, (32, 48), chunk=4).numpy(), quantise(video, (32, 48)).numpy()
    assert planar.shape == (6, 72, 32) and planar.dtype == np.uint8
    assert (planar[1, :48] == 235).all() and (planar[1, 48:] == 128).all()
    for ours, picture in zip(planar, rgb, strict=True):
        theirs = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p").to_ndarray().astype(int)
        assert np.abs(ours[:48] - theirs[:48]).max() <= 1  # Y
        assert np.abs(ours[48:] - theirs[48:]).mean() < 1.0  # U, V: a 2x2 mean against swscale's filter
    scaled = yuv420(video, (64, 96))  # scaled on the way, like quantise
    assert scaled.shape == (6, 144, 64)
    write_clip(rgb, tmp_path / "rgb.mp4", 24, (32, 48), None, 48000, 0.25, crf=0)
    write_clip(planar, tmp_path / "yuv.mp4", 24, (32, 48), None, 48000, 0.25, crf=0)

    def decoded(path: Path) -> np.ndarray:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)

    assert np.abs(decoded(tmp_path / "yuv.mp4") - decoded(tmp_path / "rgb.mp4")).mean() < 1.5
    with pytest.raises(ValueError, match="do not hold a 48x32 picture"):
        write_clip(planar, tmp_path / "bad.mp4", 24, (48, 32), None, 48000, 0.25)
    with pytest.raises(ValueError, match="even width and height"):
        yuv420(video, (31, 48))


def _child_cores(frames: np.ndarray) -> list[int]:
    import os

    return sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="no CPU affinity on this system")
def test_encoder_child_leaves_the_first_cores_to_the_gpu_process() -> None:
    import os

    from storyboard.media import Encoder

    cores = sorted(os.sched_getaffinity(0))
    for spare in (1, 2):
        encoder = Encoder(spare_cores=spare)
        try:
            seen = encoder.submit_frames((1,), lambda into: None, _child_cores)()
        finally:
            encoder.close()
        assert seen == (cores[spare:] if len(cores) >= 2 * spare else cores)
