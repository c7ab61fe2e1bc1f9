"""The pinned stager that moves weights to a GPU (hf_common.to_device). Runs where CUDA is (the device box:
`python -m pytest tests/test_gpu_stager.py`); on a CPU-only machine to_device is `.to()` and this file skips."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_to_device_moves_values_ties_and_buffers_through_small_slots() -> None:
    from storyboard.backends import hf_common

    hf_common._STAGERS.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(1000, 96), torch.nn.LayerNorm(96), torch.nn.Linear(96, 1000, bias=False))
    model[2].weight = model[0].weight  # tied, as a language model's head and embedding
    model.register_buffer("odd", torch.arange(7, dtype=torch.int64))
    model = model.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hf_common._STAGERS[torch.cuda.current_device()] = hf_common._Stager(1024)  # 1 KiB slots: tensors span many copies
    hf_common.to_device(model, "cuda")
    model2 = torch.nn.Linear(300, 300).to(torch.bfloat16)
    expect = model2.weight.detach().clone()
    hf_common.to_device(model2, "cuda")
    assert model2.weight.device.type == "cuda" and torch.equal(model2.weight.cpu(), expect)
    for key, value in model.state_dict().items():
        assert value.device.type == "cuda", key
        assert torch.equal(value.cpu(), before[key]), key
    assert model[2].weight is model[0].weight


def test_to_device_on_a_thread_beside_gpu_work_gives_both_right_answers() -> None:
    from storyboard.backends import hf_common

    hf_common._STAGERS.clear()
    model = torch.nn.Linear(2048, 2048).to(torch.bfloat16)
    expect = model.weight.detach().clone()
    a = torch.randn(2048, 2048, device="cuda")
    want = (a @ a).cpu()
    errors: list[BaseException] = []

    def move() -> None:
        try:
            hf_common.to_device(model, "cuda")
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=move)
    thread.start()
    got = [(a @ a).cpu() for _ in range(20)]
    thread.join()
    assert not errors
    assert all(torch.allclose(g, want) for g in got)
    assert torch.equal(model.weight.cpu(), expect)


def test_to_device_in_several_lanes_moves_every_weight_once_and_right() -> None:
    from storyboard.backends import hf_common

    hf_common._STAGERS.clear()
    torch.manual_seed(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(64 + i, 64 + i + 1) for i in range(9)], torch.nn.Embedding(300, 73))
    model[-1].weight = torch.nn.Parameter(torch.randn(300, 73))
    model.register_buffer("steps", torch.arange(11, dtype=torch.int32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stager = hf_common._Stager(4096, lanes=3)  # small slots: every lane copies several slots per weight
    hf_common._STAGERS[torch.cuda.current_device()] = stager
    hf_common.to_device(model, "cuda")
    for key, value in model.state_dict().items():
        assert value.device.type == "cuda", key
        assert torch.equal(value.cpu(), before[key]), key
