"""How forecache sees a model: its ordered blocks, how each is called, and where its timestep is."""

from __future__ import annotations

import inspect
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BlockIO:
    """The call convention of one block.

    ``state`` names the inputs that flow from block to block (``hidden_states``, and
    ``encoder_hidden_states`` for dual-stream blocks). ``returns`` gives the order in which the block
    returns them; ``None`` means the block returns a bare tensor, the new value of ``state[0]``.
    ``unbatched`` names tensor arguments without a batch dimension (rotary tables), never sliced
    when only some rows of a batch compute. Three conventions go beyond that:

    - ``dropped``: streams a block consumes and returns as ``None`` (SD3's last joint block returns
      ``(None, hidden_states)``): named in ``returns`` but not in ``state``, so the state shrinks;
    - ``stacked``: arguments whose first dimension stacks the batch several times (Qwen-Image's
      ``temb`` with ``zero_cond_t``): row selection takes the row from every copy;
    - ``passthrough=False``: the output cannot stand in for the input (UNet blocks that resample and
      return skip connections), so a skipped block cannot hand its input on.
    """

    state: tuple[str, ...] = ("hidden_states",)
    returns: tuple[str, ...] | None = None
    unbatched: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    stacked: tuple[str, ...] = ()
    passthrough: bool = True
    passthrough_note: str = ""

    def __post_init__(self) -> None:
        if not self.state:
            raise ValueError("BlockIO.state is empty: name at least the hidden-states argument")
        if set(self.dropped) & set(self.state):
            raise ValueError(f"dropped {self.dropped} overlaps state {self.state}: a stream either flows or is dropped")
        if self.returns is not None and set(self.returns) != set(self.state) | set(self.dropped):
            raise ValueError(
                f"returns {self.returns} must name exactly the state {self.state} plus the dropped streams {self.dropped}"
            )

    def bind(
        self, forward, args: tuple, kwargs: dict, signature: inspect.Signature | None = None
    ) -> inspect.BoundArguments:
        """The call's arguments by name (``signature``: ``forward``'s, when the caller holds it)."""
        bound = (signature or _signature(forward)).bind(*args, **kwargs)
        if not bound.arguments.keys() >= set(self.state):
            missing = sorted(set(self.state) - bound.arguments.keys())
            raise TypeError(f"block call has no argument {missing}; BlockIO.state is {self.state}")
        return bound

    def locate(self, signature: inspect.Signature) -> tuple[tuple[str, int], ...] | None:
        """Where each state argument sits in a call of a forward with ``signature``: its name and
        its position among the positional arguments (-1: keyword only). ``None`` when the
        signature does not name them all (calls are then bound, :meth:`bind`)."""
        params = list(signature.parameters.values())
        where = []
        for name in self.state:
            param = signature.parameters.get(name)
            if param is None:
                return None
            at = params.index(param)
            positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) and all(
                q.kind is not q.VAR_POSITIONAL for q in params[:at])
            where.append((name, at if positional else -1))
        return tuple(where)

    def find_state(self, where: tuple[tuple[str, int], ...], args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...] | None:
        """The state arguments of a call, read at ``where`` (:meth:`locate`) without binding it (a
        block call is on the hot path); ``None`` when one is not passed (left to its default)."""
        state = []
        for name, at in where:
            if name in kwargs:
                state.append(kwargs[name])
            elif 0 <= at < len(args):
                state.append(args[at])
            else:
                return None
        return tuple(state)

    def state_in(self, bound: inspect.BoundArguments) -> tuple[torch.Tensor, ...]:
        return tuple(map(bound.arguments.__getitem__, self.state))

    def state_out(self, output: Any) -> tuple[torch.Tensor, ...]:
        if self.returns is None:
            return (output if torch.is_tensor(output) else output[0],)
        return tuple(map(dict(zip(self.returns, output)).__getitem__, self.state))

    def make_output(self, state: tuple[torch.Tensor, ...]) -> Any:
        if not self.passthrough:
            raise NotImplementedError(
                f"this block's output cannot be built from its state: {self.passthrough_note or 'passthrough=False'}"
            )
        if self.returns is None:
            return state[0]
        return tuple(map(dict(zip(self.state, state)).get, self.returns))  # dropped streams come back as None


@dataclass
class Block:
    """One entry of an adapter's block sequence."""

    name: str
    module: nn.Module
    io: BlockIO = field(default_factory=BlockIO)


_SIGNATURES: dict[Any, inspect.Signature] = {}


def _signature(fn) -> inspect.Signature:
    # a bound method's signature lacks `self`: cache it apart from its function's
    key = (getattr(fn, "__func__", fn), hasattr(fn, "__self__"))
    if key not in _SIGNATURES:
        _SIGNATURES[key] = inspect.signature(fn)
    return _SIGNATURES[key]


def call_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a call ``module(*args, **kwargs)`` by parameter name.

    Binds against the class's ``forward``, not ``module.forward``: a runtime that wraps forward on
    the instance would otherwise hide the parameter names behind ``(*args, **kwargs)``.
    """
    return dict(_signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments)


#: role -> attribute names tried in order, for submodule selectors
DEFAULT_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attn", ("attn1", "attn", "self_attn")),
    ("cross_attn", ("attn2", "cross_attn")),
    ("mlp", ("ff", "mlp", "proj_mlp")),
    ("mlp_context", ("ff_context",)),
)


class Adapter:
    """Maps one model to what the runtime needs. Subclass and override what differs.

    The defaults fit a model whose ``forward`` takes ``timestep`` (or ``t``) and whose blocks live
    in the attributes named by ``block_attrs``.
    """

    #: attributes holding the block lists, in execution order
    block_attrs: tuple[str, ...] = ("blocks",)
    #: the call convention of every block (override :meth:`block_io` when blocks differ)
    io: BlockIO = BlockIO()
    #: names the model's forward may receive its timestep under, tried in order
    timestep_args: tuple[str, ...] = ("timestep", "t")
    #: the model's main input, whose first dimension is the batch
    hidden_arg: str = "hidden_states"
    #: submodule roles -> attribute names tried in order (see :meth:`submodules`)
    roles: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_ROLES
    #: TeaCache polynomial coefficients published for this model class (highest power first), if any
    teacache_coefficients: tuple[float, ...] | None = None
    #: MagCache's calibrated magnitude-ratio profile for this model class, if published
    magcache_ratios: Any = None
    #: the timestep the model receives at pure noise (1.0 for models fed sigma or t/1000, 1000.0
    #: for models fed scheduler timesteps); time windows of presets are fractions of it
    time_unit: float = 1.0

    def blocks(self, model: nn.Module) -> list[Block]:
        out: list[Block] = []
        for attr in self.block_attrs:
            found = getattr(model, attr, None)
            if found is None:
                continue
            if isinstance(found, nn.ModuleList | nn.Sequential):
                out.extend(Block(f"{attr}.{i}", m, self.block_io(attr, m)) for i, m in enumerate(found))
            else:  # a single block held directly, such as a UNet's mid_block
                out.append(Block(attr, found, self.block_io(attr, found)))
        if not out:
            raise ValueError(
                f"{type(self).__name__} found no blocks on {type(model).__name__} "
                f"(looked for attributes {self.block_attrs}); pass an adapter that names them"
            )
        return out

    def block_io(self, attr: str, block: nn.Module) -> BlockIO:
        return self.io

    def timestep(self, model: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | float | None:
        bound = call_arguments(model, args, kwargs)
        for name in self.timestep_args:  # a loop, not a generator: this runs at every model call
            value = bound.get(name)
            if value is not None:
                return value
        return None

    def noise_level(self, t: float) -> float:
        """The noise level of model time ``t``: 1 at pure noise, 0 at the data. Windows of presets
        are stated in it. Default ``t / time_unit``; samplers whose time runs from noise at 0 (F5-TTS,
        torchdiffeq-style flow matching) override it with ``1 - t``."""
        return t / self.time_unit

    def segment(self, model: nn.Module, args: tuple, kwargs: dict) -> Hashable | None:
        """The segment a call belongs to (a chunk or frame index read from its arguments), when the
        call says; a new key starts the next segment of the same generation. Default: ``None``
        (segments come from ``handle.next_segment()`` or ``handle.step(t, segment=...)``)."""
        return None

    def flops(self, model: nn.Module, args: tuple, kwargs: dict) -> float | None:
        """Per-row FLOPs of this call run uncached, when the adapter knows them analytically (a
        language model's matmuls); ``None`` (default): FlopCounterMode counts the first call of each
        input shape. An analytic count is right even when that first call already reuses state (a
        prefix filled by an earlier request), and costs no counting pass."""
        return None

    def must_compute(self, model: nn.Module, args: tuple, kwargs: dict) -> bool:
        """True for a call that writes state (a clean pass filling a KV cache, a prefix pass): it
        runs uncached, is never skipped and is no step of the clock. Default: False."""
        return False

    def batch_size(self, model: nn.Module, args: tuple, kwargs: dict) -> int:
        bound = call_arguments(model, args, kwargs)
        x = bound.get(self.hidden_arg)
        if x is None:
            x = next((v for v in bound.values() if torch.is_tensor(v)), None)
        if x is None:
            raise TypeError(f"cannot find the batch: the call has no tensor argument '{self.hidden_arg}'")
        return int(x.shape[0])

    def submodules(self, block: Block) -> dict[str, nn.Module]:
        """Named submodules of a block by role: ``attn``, ``cross_attn``, ``temporal_attn``, ``mlp``,
        and role-suffixed extras such as ``mlp_context``. Used by submodule selectors (FORA, PAB,
        ToCa, TaylorSeer)."""
        found: dict[str, nn.Module] = {}
        for role, names in self.roles:
            for n in names:
                module = getattr(block.module, n, None)
                if isinstance(module, nn.Module):  # SD3's last block holds ff_context = None
                    found[role] = module
                    break
        return found

    def modulated_input(self, block: Block, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """TeaCache's signal: the first block's input after timestep modulation. ``None`` means the
        adapter does not know it, and TeaCache falls back to the raw hidden states."""
        return None
