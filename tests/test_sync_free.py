"""The layer is GPU-clean: no host read of the mask per forward, one per optimizer step, no graph breaks."""

import os
import traceback

import pytest
import torch
from conftest import RandomTask, custom_loop, tiny_batch, wrapped_model

PACKAGE = os.path.join("peft_rankdyna", "")
# Tensor methods that copy a device value to the host (a synchronisation on CUDA).
HOST_READS = ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__")


class HostReads:
    """Counts host reads of tensors made from peft_rankdyna's own code while it is active."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._originals = {}

    def __enter__(self) -> "HostReads":
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)
            self._originals[name] = original

            def counting(tensor, *args, _name=name, _original=original, **kwargs):
                caller = traceback.extract_stack(limit=2)[0]
                if PACKAGE in caller.filename:
                    self.calls.append(f"{_name} at {os.path.basename(caller.filename)}:{caller.lineno}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counting)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)


def _pruned_model():
    model = wrapped_model(total_step=40, deltaT=10)
    custom_loop(model, 15)  # refreshes at 4 (still the full budget) and 14: the masks are partial from there on
    assert any(layer.rank < layer.initial_rank for layer in model.base_model.rankdyna_layers().values())
    return model


def test_the_counter_sees_a_host_read():
    from peft_rankdyna.controller import gradients_finite

    layer = next(iter(wrapped_model(total_step=10).base_model.rankdyna_layers().values()))
    layer.factor_parameters()[0].grad = torch.zeros_like(layer.factor_parameters()[0])
    with HostReads() as reads:
        gradients_finite([layer])
        layer.set_mask(layer.mask)  # a mask change reads the kept indices once
    assert [call.split(" at ")[1].split(":")[0] for call in reads.calls] == ["controller.py", "layer.py"], reads.calls


def test_a_training_forward_and_backward_read_nothing_on_the_host():
    model = _pruned_model().train()
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0, 1])}
    with HostReads() as reads:
        model(**batch).loss.backward()
    assert reads.calls == []


def test_an_optimizer_step_between_refreshes_reads_the_host_once():
    model = _pruned_model().train()
    data = RandomTask()
    model(**data[list(range(8))]).loss.backward()
    assert not model.base_model.rankdyna_config.schedule().refreshes_at(15)
    with HostReads() as reads:
        model.base_model.update_and_allocate(15)
    assert len(reads.calls) == 1, reads.calls  # the finiteness check of all gradients together


def test_the_kept_index_cache_follows_load_state_dict():
    trained = _pruned_model().eval()
    fresh = wrapped_model(total_step=40, deltaT=10).eval()
    fresh.load_state_dict(trained.state_dict())
    batch = tiny_batch()
    for (name, a), b in zip(trained.base_model.rankdyna_layers().items(), fresh.base_model.rankdyna_layers().values()):
        assert b.rank == a.rank and torch.equal(b.rankdyna_kept["default"], a.rankdyna_kept["default"]), name
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, trained(**batch).logits)


@pytest.mark.parametrize("training", [False, True])
def test_torch_compile_traces_the_model_without_graph_breaks(training):
    model = _pruned_model().train(training)
    inner = model.base_model.model  # the transformers model with RankDyna layers in it
    explanation = torch._dynamo.explain(inner)(**tiny_batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_synchronisation_on_cuda_in_a_forward_and_a_step_between_refreshes():
    model = _pruned_model().cuda().train()
    data = RandomTask()
    batch = {k: v.cuda() for k, v in data[list(range(8))].items()}
    model(**batch).loss.backward()  # warm-up: lazy CUDA initialisation may synchronise
    model.zero_grad()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = model.base_model.model(**batch).loss
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    model.base_model.update_and_allocate(15)  # one synchronisation, by design (the finiteness check)
