"""The diffusers adapters against the real diffusers classes, built tiny with random weights."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from forecache.core.adapters import diffusers as registry  # noqa: E402
from forecache.core.adapters.base import Block, BlockIO  # noqa: E402
from forecache.core.adapters.diffusers import (  # noqa: E402
    DiffusersAdapter,
    UnknownModelError,
    adapter_for,
    call_arguments,
    register,
    registered,
    select_rows,
)
from forecache.core.testing import tiny_models as tiny  # noqa: E402

BATCH = 2


@dataclass(frozen=True)
class Case:
    id: str
    build: Any
    adapter: str
    blocks: tuple[str, ...]
    overrides: dict = field(default_factory=dict)


_DUAL_THEN_SINGLE = (
    "transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"
)

CASES = [
    Case("flux", tiny.tiny_flux, "flux", _DUAL_THEN_SINGLE),
    Case("sd3", tiny.tiny_sd3, "sd3", ("transformer_blocks.0", "transformer_blocks.1")),
    Case("wan", tiny.tiny_wan, "wan", ("blocks.0", "blocks.1")),
    Case("cogvideox", tiny.tiny_cogvideox, "cogvideox", ("transformer_blocks.0", "transformer_blocks.1")),
    Case("hunyuan", tiny.tiny_hunyuan_video, "hunyuan-video", _DUAL_THEN_SINGLE),
    Case("hunyuan-token-replace", tiny.tiny_hunyuan_video, "hunyuan-video", _DUAL_THEN_SINGLE,
         {"image_condition_type": "token_replace"}),
    Case("ltx", tiny.tiny_ltx_video, "ltx-video", ("transformer_blocks.0", "transformer_blocks.1")),
    Case("qwen", tiny.tiny_qwen_image, "qwen-image", ("transformer_blocks.0", "transformer_blocks.1")),
    Case("qwen-zero-cond-t", tiny.tiny_qwen_image, "qwen-image", ("transformer_blocks.0", "transformer_blocks.1"),
         {"zero_cond_t": True}),
    Case("unet", tiny.tiny_unet, "unet-2d-condition",
         ("down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")),
]


@dataclass
class Call:
    block: Block
    args: tuple
    kwargs: dict
    output: Any


@dataclass
class Run:
    case: Case
    model: nn.Module
    adapter: DiffusersAdapter
    inputs: dict
    calls: list[Call]


def _run(model: nn.Module, adapter, inputs: dict) -> list[Call]:
    """Every block call of one forward, in call order."""
    blocks = adapter.blocks(model)
    calls: list[Call] = []
    handles = []
    for b in blocks:
        def hook(module, args, kwargs, output, b=b):
            calls.append(Call(b, args, dict(kwargs), output))
        handles.append(b.module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


_RUNS: dict[str, Run] = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # these models are too small to gain from threads, and spare cores keep timings steady on a busy box
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def run(request) -> Run:
    case: Case = request.param
    if case.id not in _RUNS:
        model = case.build(**case.overrides)
        adapter = adapter_for(model)
        inputs = tiny.tiny_inputs(model, batch=BATCH)
        _RUNS[case.id] = Run(case, model, adapter, inputs, _run(model, adapter, inputs))
    return _RUNS[case.id]


def _bound(call: Call) -> inspect.BoundArguments:
    return call.block.io.bind(call.block.module.forward, call.args, call.kwargs)


def _invoke(module: nn.Module, arguments: dict) -> Any:
    """Call ``module`` with arguments given by parameter name (``*args``/``**kwargs`` included)."""
    sig = inspect.signature(type(module).forward)
    ba = inspect.BoundArguments(sig, {"self": module, **arguments})
    with torch.no_grad():
        return module(*ba.args[1:], **ba.kwargs)


def _assert_same(a: Any, b: Any, *, exact: bool = True, atol: float = 1e-5) -> None:
    """Equal structure (tuple/list nesting, None positions) and equal tensors."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b), (type(a), type(b))
        assert a.shape == b.shape, (a.shape, b.shape)
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)
    elif isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b), (type(a), type(b))
        for x, y in zip(a, b):
            _assert_same(x, y, exact=exact, atol=atol)
    else:
        assert a == b, (a, b)


def _same_structure(a: Any, b: Any) -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape
    elif isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same_structure(x, y)
    else:
        assert a is None and b is None


# -- registry ----------------------------------------------------------------------------------------------


def test_every_builtin_class_is_registered():
    names = {cls.__name__ for cls in registered()}
    assert set(tiny.TINY_BUILDERS) <= names


def test_adapter_and_blocks(run):
    assert isinstance(run.adapter, DiffusersAdapter)
    assert run.adapter.name == run.case.adapter
    assert tuple(b.name for b in run.adapter.blocks(run.model)) == run.case.blocks
    # every block ran exactly once, in the adapter's order
    assert tuple(c.block.name for c in run.calls) == run.case.blocks


def test_unknown_model_names_the_fix():
    class Mystery(nn.Module):
        pass

    with pytest.raises(UnknownModelError) as err:
        adapter_for(Mystery())
    msg = str(err.value)
    assert "Mystery" in msg and "FluxTransformer2DModel" in msg and "register(Mystery" in msg


def test_unknown_pipeline_hints_at_its_transformer():
    pipe = SimpleNamespace(transformer=nn.Linear(1, 1))
    with pytest.raises(UnknownModelError, match=r"pass its \.transformer"):
        adapter_for(pipe)


@pytest.fixture
def clean_registry():
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_subclass_inherits_and_registration_overrides(clean_registry):
    from diffusers import FluxTransformer2DModel

    class MyFlux(FluxTransformer2DModel):
        pass

    model = tiny.tiny_flux()
    model.__class__ = MyFlux
    assert adapter_for(model).name == "flux"

    mine = DiffusersAdapter(name="mine", time_unit=1.0, block_attrs=("transformer_blocks",))
    register(MyFlux, mine)
    assert adapter_for(model) is mine
    with pytest.raises(ValueError, match="replace=True"):
        register(MyFlux, DiffusersAdapter(name="other", time_unit=1.0))
    register(MyFlux, DiffusersAdapter(name="other", time_unit=1.0), replace=True)
    assert adapter_for(model).name == "other"


def test_registering_a_new_model_in_a_few_lines(clean_registry):
    """The module docstring's example, on a toy model."""

    class ToyBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ff = nn.Linear(4, 4)

        def forward(self, hidden_states, rotary_emb):
            return hidden_states + self.ff(hidden_states) * rotary_emb.mean()

    class MyDiT(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([ToyBlock(), ToyBlock()])

        def forward(self, hidden_states, timestep):
            rotary = torch.ones(hidden_states.shape[1], 4)
            for block in self.blocks:
                hidden_states = block(hidden_states, rotary)
            return hidden_states

    register(MyDiT, DiffusersAdapter(
        name="my-dit",
        time_unit=1000.0,
        block_attrs=("blocks",),
        io=BlockIO(state=("hidden_states",), returns=None, unbatched=("rotary_emb",)),
    ))
    model = MyDiT()
    adapter = adapter_for(model)
    x, t = torch.randn(2, 3, 4), torch.tensor([500.0, 500.0])
    assert [b.name for b in adapter.blocks(model)] == ["blocks.0", "blocks.1"]
    assert adapter.timestep(model, (x, t), {}) is t
    assert adapter.submodules(adapter.blocks(model)[0])["mlp"] is model.blocks[0].ff
    assert adapter.modulated_input(adapter.blocks(model)[0], (x,), {}) is None


def test_register_rejects_instances_and_non_adapters(clean_registry):
    with pytest.raises(TypeError, match="type\\(model\\)"):
        register(nn.Linear(1, 1), DiffusersAdapter(name="x", time_unit=1.0))
    with pytest.raises(TypeError, match="Adapter"):
        register(nn.Linear, object())


# -- block call conventions --------------------------------------------------------------------------------


def test_state_round_trip(run):
    for call in run.calls:
        io = call.block.io
        state = io.state_out(call.output)
        assert len(state) == len(io.state) and all(torch.is_tensor(s) for s in state)
        passthrough = getattr(io, "passthrough", True)
        if not passthrough:
            with pytest.raises(NotImplementedError, match="DeepCache"):
                io.make_output(state)
            continue
        _assert_same(io.make_output(state), call.output)
        # a skipped block hands on its input in its own output format
        _same_structure(io.make_output(io.state_in(_bound(call))), call.output)


def test_state_flows_block_to_block(run):
    """Each block's state comes from the previous block's output, and replaying block i+1 on block i's
    recomputed state reproduces its output."""
    for prev, nxt in zip(run.calls, run.calls[1:]):
        out_state = dict(zip(prev.block.io.state, prev.block.io.state_out(prev.output)))
        nxt_args = call_arguments(nxt.block.module, nxt.args, nxt.kwargs)
        for name in nxt.block.io.state:
            assert name in out_state, f"{nxt.block.name} takes state {name!r} that {prev.block.name} does not return"
            assert torch.equal(out_state[name], nxt_args[name])

        recomputed = _invoke(prev.block.module, call_arguments(prev.block.module, prev.args, prev.kwargs))
        fresh = dict(zip(prev.block.io.state, prev.block.io.state_out(recomputed)))
        replay = {**nxt_args, **{n: fresh[n] for n in nxt.block.io.state}}
        _assert_same(_invoke(nxt.block.module, replay), nxt.output, exact=False)


def test_row_selection_matches_full_batch(run):
    for call in run.calls:
        arguments = call_arguments(call.block.module, call.args, call.kwargs)
        for row in range(BATCH):
            sliced = _invoke(call.block.module, select_rows(call.block.io, arguments, [row], BATCH))
            expected = select_rows(BlockIO(), {"out": call.output}, [row], BATCH)["out"]
            _assert_same(sliced, expected, exact=False)


def _tensors(value: Any):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def test_every_tensor_argument_is_batched_or_declared(run):
    """A tensor argument without the batch as its first dimension must be declared (unbatched or stacked),
    else a runtime slicing rows by dim 0 would silently feed it whole; and what is declared unbatched
    really lacks the batch dimension."""
    for call in run.calls:
        io = call.block.io
        declared = set(io.unbatched) | set(getattr(io, "stacked", ()))
        for name, value in call_arguments(call.block.module, call.args, call.kwargs).items():
            for t in _tensors(value):
                if name in io.unbatched:
                    assert t.ndim == 0 or t.shape[0] != BATCH, (call.block.name, name)
                elif t.ndim > 0 and t.shape[0] != BATCH:
                    where = f"{call.block.name}: {name} {tuple(t.shape)}"
                    assert name in declared, f"{where} is neither batched nor declared"


def test_sd3_last_block_drops_the_text_stream():
    model = tiny.tiny_sd3()
    blocks = adapter_for(model).blocks(model)
    last = blocks[-1].io
    assert last.state == ("hidden_states",)
    h = torch.randn(1, 4, 32)
    assert last.make_output((h,)) == (None, h)
    assert blocks[0].io.state == ("hidden_states", "encoder_hidden_states")


def test_block_io_validation():
    with pytest.raises(ValueError, match="overlaps"):
        BlockIO(state=("hidden_states",), dropped=("hidden_states",))
    with pytest.raises(ValueError, match="dropped"):
        BlockIO(state=("hidden_states",), returns=("encoder_hidden_states", "hidden_states"))


# -- timestep, batch, TeaCache signal ----------------------------------------------------------------------


def test_timestep_and_batch(run):
    adapter, model, inputs = run.adapter, run.model, run.inputs
    assert adapter.timestep(model, (), inputs) is inputs["timestep"]
    assert adapter.batch_size(model, (), inputs) == BATCH
    # positional calls bind by the class's forward signature
    names = list(inspect.signature(type(model).forward).parameters)[1:]
    k = names.index("timestep") + 1
    args = tuple(inputs.get(n) for n in names[:k])
    rest = {n: v for n, v in inputs.items() if n not in names[:k]}
    assert adapter.timestep(model, args, rest) is inputs["timestep"]
    assert float(inputs["timestep"].max()) <= adapter.time_unit


def test_modulated_input(run):
    first = run.calls[0]
    signal = run.adapter.modulated_input(first.block, first.args, first.kwargs)
    if run.case.id == "unet":
        assert signal is None
        return
    assert torch.is_tensor(signal) and signal.shape[0] == BATCH and torch.isfinite(signal).all()
    # the signal moves with the timestep, which is what TeaCache measures
    other = dict(run.inputs, timestep=run.inputs["timestep"] * 0.5)
    later = _run(run.model, run.adapter, other)[0]
    moved = run.adapter.modulated_input(later.block, later.args, later.kwargs)
    assert moved.shape == signal.shape and not torch.allclose(moved, signal)


def test_teacache_coefficients_follow_the_config():
    wan = registry.WAN_ADAPTER
    small = wan.for_model(SimpleNamespace(config={"num_layers": 30, "num_attention_heads": 12, "in_channels": 16}))
    assert small.teacache_coefficients == wan.teacache_fit("Wan2.1-T2V-1.3B").coefficients
    assert small.teacache_coefficients[0] == pytest.approx(-5.21862437e04)
    big = wan.for_model(SimpleNamespace(config={"num_layers": 40, "num_attention_heads": 40, "in_channels": 16,
                                                "image_dim": None}))
    assert big.teacache_coefficients[0] == pytest.approx(-3.03318725e05)
    # the 480P and 720P I2V checkpoints share a config: no silent guess
    i2v = {"num_layers": 40, "num_attention_heads": 40, "in_channels": 36, "image_dim": 1280}
    assert wan.for_model(SimpleNamespace(config=i2v)).teacache_coefficients is None
    with pytest.raises(KeyError, match="published fits"):
        wan.teacache_fit("Wan9")

    assert adapter_for(tiny.tiny_flux()).teacache_coefficients[0] == pytest.approx(4.98651651e02)
    assert adapter_for(tiny.tiny_hunyuan_video()).teacache_coefficients[0] == pytest.approx(7.33226126e02)
    assert adapter_for(tiny.tiny_ltx_video()).teacache_coefficients[0] == pytest.approx(2.14700694e01)
    cog = registry.COGVIDEOX_ADAPTER.for_model(SimpleNamespace(config={"num_attention_heads": 30}))
    assert cog.teacache_coefficients[0] == pytest.approx(-3.10658903e01)


# -- the whole Flux pipeline -------------------------------------------------------------------------------


def test_tiny_flux_pipeline_is_deterministic():
    pipe = tiny.tiny_flux_pipeline()
    kwargs = dict(num_inference_steps=20, height=16, width=16, guidance_scale=3.5, output_type="np")

    def image(seed: int):
        return pipe("a red square", generator=torch.Generator().manual_seed(seed), **kwargs).images

    first, again, other = image(0), image(0), image(1)
    assert first.shape == (1, 16, 16, 3)
    assert (first == again).all()
    assert not (first == other).all()


def test_tiny_inputs_rejects_unknown_models():
    with pytest.raises(ValueError, match="tiny_inputs does not know Linear"):
        tiny.tiny_inputs(nn.Linear(1, 1))
