"""A second GPU's copy of a loaded pipeline (hf_common.Siblings, clone_pipeline): under `--gpus 0,1` the first GPU
reads the checkpoint and the others copy its weights. The copy is checked on the CPU here (same code, device `cpu`);
the GPU-to-GPU figures are bench/gpu_batch.py's."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402

from storyboard.backends import hf_common  # noqa: E402


@pytest.fixture(scope="module")
def flux_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.flux(tmp_path_factory.mktemp("siblings") / "flux")


def tensors(pipe) -> dict[str, torch.Tensor]:  # noqa: ANN001
    out = {}
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module):
            out.update({f"{name}.{key}": value for key, value in part.state_dict(keep_vars=True).items()})
    return out


def draw(pipe, seed: int = 5):  # noqa: ANN001, ANN201
    return pipe(prompt="a judge cat", prompt_2="a judge cat in a courtroom", width=64, height=64, num_inference_steps=2,
                guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]


def test_clone_has_its_own_weights_hooks_and_tokenizers_and_draws_the_same(flux_path: Path) -> None:
    pipe = hf_common.load_pipeline({"fp8": True}, str(flux_path), "image", torch.float32, "cpu")
    twin = hf_common.clone_pipeline(pipe, "cpu", {"fp8": True}, torch.float32)
    mine, theirs = tensors(pipe), tensors(twin)
    assert mine.keys() == theirs.keys() and len(mine) > 50
    for key, value in mine.items():
        assert value.dtype == theirs[key].dtype, key  # fp8 storage kept
        assert torch.equal(value.float(), theirs[key].float()), key
        assert value.data_ptr() != theirs[key].data_ptr(), key  # a copy, not the same memory
    block = twin.transformer.transformer_blocks[0]
    assert block.attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert twin.tokenizer_2 is not pipe.tokenizer_2 and twin.scheduler is not pipe.scheduler
    tied = [(a, b) for a, x in mine.items() for b, y in mine.items() if a < b and x is y]
    assert tied and all(theirs[a] is theirs[b] for a, b in tied)  # weights tied in the original (T5's embedding) stay tied
    before = draw(pipe)
    assert abs(draw(twin) - before).max() < 1e-4  # the fp8 hooks of the copy act on the copy's weights (CPU kernels differ by ~1e-6 with alignment)
    with torch.no_grad():
        next(twin.transformer.parameters()).zero_()  # and the two are independent
    assert (draw(pipe) == before).all()
    assert abs(draw(twin) - before).max() > 1e-3  # the copy draws with its own weights


def test_a_second_device_waits_for_the_load_under_way_then_copies_it() -> None:
    siblings = hf_common.Siblings()
    key = ("model", "bf16")
    assert siblings.claim(key, "cuda:0") is None  # the first device loads
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(siblings.claim(key, "cuda:1")))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and not got  # waits while cuda:0 loads

    class Pipe:
        pass

    pipe = Pipe()
    siblings.loaded(key, "cuda:0", pipe)
    waiter.join(5)
    assert got == [pipe]
    assert siblings.claim(("other",), "cuda:1") is None  # another checkpoint: its own load


def test_after_a_failed_load_the_waiting_device_loads_itself_and_released_pipelines_are_not_copied() -> None:
    siblings = hf_common.Siblings()
    key = ("model",)
    assert siblings.claim(key, "cuda:0") is None
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(siblings.claim(key, "cuda:1")))
    waiter.start()
    time.sleep(0.1)
    siblings.failed(key, "cuda:0")
    waiter.join(5)
    assert got == [None]  # cuda:1 now loads it

    class Pipe:
        pass

    pipe = Pipe()
    siblings.loaded(key, "cuda:1", pipe)
    assert siblings.claim(key, "cuda:0") is pipe
    del pipe  # the backend released it at the end of the stage
    assert siblings.claim(key, "cuda:0") is None


def test_only_plain_gpu_loads_are_copied(flux_path: Path) -> None:
    key = hf_common._sibling_key
    assert key(flux_path, {}, torch.bfloat16, "cuda:0", None) == key(flux_path, {}, torch.bfloat16, "cuda:1", None)
    assert key(flux_path, {"fp8": True}, torch.bfloat16, "cuda:0", None) != key(flux_path, {}, torch.bfloat16, "cuda:0", None)
    assert key(flux_path, {}, torch.bfloat16, "cpu", None) is None
    assert key(flux_path, {"text_encoder_4bit": True}, torch.bfloat16, "cuda:0", None) is None
    assert key(flux_path, {"offload": "model"}, torch.bfloat16, "cuda:0", None) is None
    assert key(flux_path, {}, torch.bfloat16, "cuda:0", {"vae": object()}) is None


def test_worker_processes_copy_the_leaders_weights_and_draw_the_same(tmp_path: Path, flux_path: Path) -> None:
    """With a worker process per device, the first reads the checkpoint it loads ahead and offers its weights; the
    other waits for the offer and copies them instead of reading the checkpoint (CUDA IPC between GPUs; here the
    CPU stand-in shares them through shared memory). The beats come out as drawn without workers."""
    import json

    import numpy as np
    from PIL import Image

    from storyboard.batch import run_batch
    from storyboard.distribute import GPUProcesses
    from storyboard.profiles import resolve_config

    from helpers import PeerSharingWorker

    image = {"backend": "diffusers", "model": str(flux_path), "device": "cpu", "edit": "img2img", "presets": {"draft": {"steps": 2, "long_side": None}}}
    config = {**resolve_config("offline", {"image": image}), "load_ahead": "on"}
    profile = tmp_path / "flux.yaml"
    profile.write_text(json.dumps(config))
    ideas = tmp_path / "ideas.txt"
    ideas.write_text("A cat who wants to be a judge\n")
    assert run_batch(ideas, tmp_path / "plain", format_name="explainer5", profile=str(profile), stages=("visual",))["status"] == "ok"
    workers = GPUProcesses(config, ["cpu", "cpu"], worker=PeerSharingWorker, share=True)  # type: ignore[arg-type]
    try:  # the batch loads the image model ahead while the processes write the plan, then frees the planners
        summary = run_batch(ideas, tmp_path / "shared", format_name="explainer5", profile=str(profile), stages=("visual",), workers=workers)
        assert summary["status"] == "ok", summary["failed"]
        assert [child.call("peer_copies") for child in workers._children] == [0, 1]  # the second process copied
        assert summary["loads"]["image"] == 2
        assert set(summary["workers"]["image"]) == {"cpu#0", "cpu#1"} and all(row["beats"] > 0 for row in summary["workers"]["image"].values())
    finally:
        workers.close()
    roots = [next((tmp_path / name).iterdir()) for name in ("plain", "shared")]

    def images(root: Path) -> dict[str, np.ndarray]:
        artifacts = json.loads((root / "run.json").read_text())["artifacts"]
        return {rel: np.asarray(Image.open(root / rel).convert("RGB"), dtype=np.int16) for rel in artifacts if rel.startswith("beats/")}

    plain, shared = images(roots[0]), images(roots[1])
    assert plain.keys() == shared.keys() and len(plain) > 4
    for rel, pixels in plain.items():  # CPU kernels round differently with the copies' memory alignment (~1e-6)
        assert pixels.shape == shared[rel].shape and np.abs(pixels - shared[rel]).max() <= 2, rel


def test_a_follower_loads_itself_when_no_offer_comes(flux_path: Path) -> None:
    """A follower waits for the leader's offers only for what the leader offers: after an empty hand-over (the leader
    loaded nothing it could share, or failed) its load reads the checkpoint."""
    siblings = hf_common.Siblings()
    siblings.expect()
    key = ("model",)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(siblings.claim(key, "cuda:1")))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and not got  # waits for the hand-over
    assert siblings.adopt([]) == 0
    waiter.join(5)
    assert got == [None] and siblings.copied_from_peers == 0
