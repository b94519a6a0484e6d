"""Train the reference molecule flow model (``MoleculeEGNN``) by flow matching on the NCI conformers.

    python -m forecache.science.train --out models/molecule-flow --minutes 60

Recipe (defaults in brackets; every choice follows ``forecache.science.sampler`` exactly, since the
sampler integrates what this trains):

- Data: the train split (:func:`~forecache.science.dataset.train_val_split`) of
  :func:`~forecache.science.dataset.build_dataset`, coordinates centred on each molecule's centre of mass
  (unweighted: the mean of its atoms, as the sampler's noise is centred).
- Path: ``x_t = (1 - t) x0 + t x1``, ``t = 0`` noise, ``t = 1`` data. The noise ``x0`` is drawn by the
  sampler's own function (``sampler._initial_state``): zero-centre-of-mass standard Gaussian coordinates,
  standard Gaussian one-hot noise for atom types and charges, symmetric zero-diagonal Gaussian bond noise.
  ``x1``: coordinates in Å and one-hot atom types, charges and bonds.
- Alignment [on]: each data molecule is rotated (proper rotation, Kabsch) onto its noise before
  interpolating, the rotational part of equivariant optimal transport (Klein, Krämer and Noé, arXiv
  2306.15030; Song et al., arXiv 2312.07168; SemlaFlow, arXiv 2406.07266, aligns too). It straightens the
  paths and, since the data
  distribution is rotation invariant and the model equivariant, it is also the random-rotation augmentation:
  no separate augmentation is done.
- Time [Beta(2, 1), density 2t]: more training near the data end, where bond lengths and bond orders are
  decided (our choice; not checked against a published recipe). ``--time uniform`` gives U(0, 1).
- Self-conditioning [p = 0.5, per batch]: a no-grad first pass at the same ``x_t`` and ``t``; its prediction,
  turned into the state the sampler feeds back (``sampler._prediction``: coordinates, softmax probabilities,
  masked), is the second pass's ``cond`` (Chen et al., arXiv 2208.04202). Without it ``cond=None``, as the
  sampler's first step. ``--cond-passes K --cond-lag L`` [1, 0] make the ``cond`` as the sampler does: from
  a chain of passes at earlier points of the path (:func:`self_condition`); ``--cond-noise S`` [0] adds noise
  to it (:func:`perturb_condition`).
- Loss (the network predicts ``x1``): ``3 * coordinate MSE`` (mean over real atoms and x, y, z, Å²)
  ``+ 0.4 * CE(atom types) + 1 * CE(charges) + 2 * CE(bonds)``: FlowMol's weights for its Gaussian
  categorical flow (Dunn and Koes, arXiv 2404.19739, ``configs/qm9_gaussian.yaml``: x 3, a 0.4, c 1,
  e 2). Bond CE over the pairs i < j of real atoms; most pairs are not bonded (about 90% at 20 atoms), so a
  'none' pair weighs ``--none-weight`` [0.25] of a bonded pair (weighted mean), which roughly balances
  bonded and non-bonded pairs without making the model eager to bond.
- AdamW [lr 1e-3, weight decay 1e-5, betas (0.9, 0.99)], linear warm-up [200 steps] then cosine decay to
  10%; with ``--minutes`` the cosine is planned over the steps the budget is expected to reach (measured
  over the first 20 steps, as ``forecache.dllm.reference.train`` does). Gradient norm clipped at 1.
- EMA of the weights [decay 0.999, with the usual ``(1 + n) / (10 + n)`` ramp]; the saved weights are the
  EMA's. ``--init FOLDER`` continues from them (model and EMA start there; a fresh optimizer and schedule)
  and appends to the folder's log.

Writes to ``--out``: ``model.safetensors`` + ``config.json`` (:meth:`MoleculeEGNN.save`), ``sizes.json``
(the train split's histogram of atom counts, which generation draws molecule sizes from: see
:func:`draw_sizes`), ``train_log.json`` (the recipe, and per step the loss of every head; validation loss
every ``--val-every`` steps), ``loss.png``. Checkpoints every ``--save-minutes``. At the end it samples
``--eval-samples`` molecules with 100 Euler steps on the ``--grid`` [linear] time grid from the saved
weights and prints :func:`~forecache.science.evaluate.evaluate_molecules` as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from forecache.core.lr_schedule import warmup_cosine
from tqdm.auto import tqdm

from .model import EGNNConfig, MoleculeEGNN
from .molecule import collate
from .sampler import _initial_state, _prediction, sample
from .sizes import atom_mask, draw_sizes, load_sizes, save_sizes, size_histogram

LOG = "train_log.json"
#: FlowMol's loss weights (coordinates, atom types, charges, bonds)
LOSS_WEIGHTS = {"coords": 3.0, "atoms": 0.4, "charges": 1.0, "bonds": 2.0}
HEADS = (("atoms", "atom_logits", "atom_types"), ("charges", "charge_logits", "charges"), ("bonds", "bond_logits", "bonds"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/molecule-flow")
    p.add_argument("--steps", type=int, default=1_000_000, help="at most this many steps")
    p.add_argument("--minutes", type=float, default=None, help="time budget; plans the cosine schedule")
    p.add_argument("--batch", type=int, default=64, help="molecules per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (0: no EMA)")
    p.add_argument("--time", choices=("beta", "uniform"), default="beta", help="t ~ Beta(2, 1) or U(0, 1)")
    p.add_argument("--self-cond", type=float, default=0.5, help="probability of a self-conditioned step")
    p.add_argument("--cond-passes", type=int, default=1,
                   help="self-conditioning input from a chain of up to this many no-grad passes (1: Chen et al.)")
    p.add_argument("--cond-lag", type=float, default=0.0,
                   help="the chain's passes at earlier points of the path, up to this time gap apart (0: same t)")
    p.add_argument("--cond-noise", type=float, default=0.0,
                   help="Gaussian noise of std up to this on the self-conditioning input (Å, probabilities; 0: none)")
    p.add_argument("--none-weight", type=float, default=0.25, help="weight of a non-bonded pair in the bond CE")
    p.add_argument("--no-align", action="store_true", help="no Kabsch rotation of the data onto the noise")
    p.add_argument("--config", default=None, metavar="JSON", help='EGNNConfig overrides, e.g. \'{"layers": 4}\'')
    p.add_argument("--init", default=None, metavar="FOLDER", help="continue from a checkpoint this script saved")
    p.add_argument("--save-minutes", type=float, default=10.0)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--eval-samples", type=int, default=200, help="molecules sampled at the end (0: none)")
    p.add_argument("--grid", choices=("linear", "log"), default="linear", help="time grid of the final sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-every", type=int, default=20)
    return p.parse_args(argv)


# -- the flow-matching objective -----------------------------------------------------------------------
def feature_sizes(config: EGNNConfig) -> dict[str, int]:
    return {"atoms": config.num_atom_types, "charges": config.num_charges, "bonds": config.num_bond_types}


def clean_state(batch: dict[str, torch.Tensor], config: EGNNConfig) -> dict[str, torch.Tensor]:
    """``x1``: centred coordinates and one-hot features of a collated batch, zero on padding."""
    mask = batch["mask"]
    node = mask.unsqueeze(-1).float()
    count = node.sum(1, keepdim=True).clamp_min(1.0)
    coords = batch["coords"].float()
    x1 = {"coords": (coords - (coords * node).sum(1, keepdim=True) / count) * node,
          "atoms": F.one_hot(batch["atom_types"], config.num_atom_types).float() * node}
    if config.num_charges:
        x1["charges"] = F.one_hot(batch["charges"], config.num_charges).float() * node
    if config.num_bond_types:
        n = mask.shape[1]
        pair = mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool)
        x1["bonds"] = F.one_hot(batch["bonds"], config.num_bond_types).float() * pair.unsqueeze(-1)
    return x1


def kabsch_onto(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N, 3), centred, rotated (det +1) to best match the centred ``y``; padding stays 0."""
    w = mask.unsqueeze(-1).to(x.dtype)
    u, _, vh = torch.linalg.svd((x * w).transpose(1, 2) @ (y * w))
    d = torch.sign(torch.linalg.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    flip = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    rotation = u @ flip @ vh  # x @ rotation best matches y
    return (x @ rotation) * w


def draw_times(n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Training times in [0, 1): Beta(2, 1) (the square root of a uniform) or U(0, 1)."""
    u = torch.rand(n, generator=generator)
    t = u.sqrt() if kind == "beta" else u
    return t.clamp(max=1.0 - 1e-4)  # the network is never asked at t = 1


def interpolate(x1: dict[str, torch.Tensor], mask: torch.Tensor, t: torch.Tensor, config: EGNNConfig,
                generator: torch.Generator, align: bool = True) -> tuple[dict, dict, dict]:
    """``(x_t, x1, x0)``: noise ``x0`` drawn as the sampler draws it, the data optionally rotated onto it."""
    x0 = _initial_state(mask, feature_sizes(config), None, generator)
    x1 = dict(x1)
    if align:
        x1["coords"] = kabsch_onto(x1["coords"], x0["coords"], mask)
    return path_point(x0, x1, t), x1, x0


def path_point(x0: dict[str, torch.Tensor], x1: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
    """``(1 - t) x0 + t x1`` per feature, ``t`` per row."""
    point = {}
    for k in x0:
        tk = t.view(-1, *([1] * (x0[k].dim() - 1)))
        point[k] = (1 - tk) * x0[k] + tk * x1[k]
    return point


def flow_loss(model: MoleculeEGNN, batch: dict[str, torch.Tensor], generator: torch.Generator, *,
              time_dist: str = "beta", self_cond: float = 0.5, none_weight: float = 0.25, align: bool = True,
              weights: dict[str, float] = LOSS_WEIGHTS, t: torch.Tensor | None = None,
              cond_passes: int = 1, cond_lag: float = 0.0, cond_noise: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The weighted loss of one batch (a collated dict) and its parts ``{"coords", "atoms", ...}`` as floats.

    ``cond_passes``, ``cond_lag`` and ``cond_noise`` shape the self-conditioning input (see
    :func:`self_condition` and :func:`perturb_condition`)."""
    config = model.config
    mask = batch["mask"]
    B, N = mask.shape
    x1 = clean_state(batch, config)
    if t is None:
        t = draw_times(B, time_dist, generator)
    xt, x1, x0 = interpolate(x1, mask, t, config, generator, align)
    cond = None
    if config.self_condition and self_cond > 0 and float(torch.rand(1, generator=generator)) < self_cond:
        cond = self_condition(model, x0, x1, mask, t, generator, cond_passes, cond_lag)
        if cond_noise:  # a negative value reaches perturb_condition's error
            cond = perturb_condition(cond, mask, cond_noise, generator)
    out = model(**xt, mask=mask, t=t, cond=cond)
    node = mask.float()
    parts = {"coords": (((out["coords"] - x1["coords"]) ** 2).sum(-1) * node).sum() / (3 * node.sum())}
    for name, head, target_key in HEADS:
        if name not in x1:
            continue
        logits, target = out[head], batch[target_key]
        if name == "bonds":
            upper = torch.triu(torch.ones(N, N, dtype=torch.bool), diagonal=1)
            select = mask.unsqueeze(1) & mask.unsqueeze(2) & upper
            ce = F.cross_entropy(logits[select], target[select], reduction="none")
            w = torch.where(target[select] == 0, none_weight, 1.0)
            parts[name] = (ce * w).sum() / w.sum().clamp_min(1e-8)
        else:
            parts[name] = F.cross_entropy(logits[mask], target[mask])
    loss = sum(weights[k] * v for k, v in parts.items())
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def self_condition(model: MoleculeEGNN, x0: dict, x1: dict, mask: torch.Tensor, t: torch.Tensor,
                   generator: torch.Generator, passes: int = 1, lag: float = 0.0) -> dict[str, torch.Tensor]:
    """The ``cond`` of a self-conditioned training step: the prediction of a chain of no-grad passes.

    With the defaults (one pass, no lag) it is Chen et al.'s: one pass at the same ``x_t`` and ``t`` without
    ``cond``. The sampler instead feeds each call the previous *step's* prediction, itself self-conditioned:
    a chain along the path, one step behind. ``passes = K`` draws a chain length ``k`` in ``1..K`` per batch
    and ``lag = L`` a gap ``d`` in ``[0, L)`` per row; the passes run at ``t - k d, ..., t - 2d, t - d``
    (points of the same path, clamped at 0), each conditioned on the one before. The chain is meant to teach
    the model the input it meets when sampling (a prediction already refined, from a slightly earlier point);
    the one-pass recipe leaves the reference model over-correcting such an input, so that its predictions
    oscillate with a period of two steps late in sampling. Fine-tuning with the chain did not fix that
    (``packages/science/ADAPTER.md``). The defaults draw no extra random numbers: the one-pass recipe's
    random stream is unchanged."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"cond_passes={passes!r} must be an int >= 1 (1: one pass at the same t, Chen et al.)")
    if not 0.0 <= lag < 1.0:
        raise ValueError(f"cond_lag={lag!r} must lie in [0, 1): the largest time gap between chained passes, e.g. 0.03")
    k = 1 + int(torch.randint(passes, (1,), generator=generator)) if passes > 1 else 1
    gap = torch.rand(t.shape, generator=generator) * lag if lag > 0 else torch.zeros_like(t)
    cond = None
    with torch.no_grad():
        for j in range(k, 0, -1):
            tj = (t - j * gap).clamp_min(0.0)
            xj = path_point(x0, x1, tj)
            first = model(**xj, mask=mask, t=tj, cond=cond)
            cond = {key: v.detach() for key, v in _prediction(first, xj, _masks(mask)).items()}
    return cond


def perturb_condition(cond: dict[str, torch.Tensor], mask: torch.Tensor, noise: float,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``cond`` plus Gaussian noise of a std drawn per molecule from ``[0, noise)`` (Å for the coordinates, whose
    noise has its centre of mass removed, probability units for the rest), masked like the sampler's state.

    Why: in the one-pass recipe ``cond`` is a fixed function of ``x_t``, so training never says how the model
    should answer a ``cond`` that differs from its own first pass, and the sampler feeds exactly such inputs
    (the previous step's prediction, or a forecast). Noise the target does not depend on was meant to teach the
    model to damp those differences instead of over-correcting them, the feedback that makes the reference
    model's late predictions alternate between steps. Fine-tuning with it raised the uncached quality but not
    what forecasting keeps of it (``packages/science/ADAPTER.md``)."""
    if not noise >= 0:
        raise ValueError(f"cond_noise={noise!r} must be >= 0: the largest std of the noise, e.g. 0.05 (0: none)")
    masks = _masks(mask)
    scale = torch.rand(mask.shape[0], generator=generator) * noise
    out = {}
    for key, value in cond.items():
        eps = torch.randn(value.shape, generator=generator) * masks[key]
        if key == "coords":
            eps = eps - eps.sum(1, keepdim=True) / masks[key].sum(1, keepdim=True).clamp_min(1)
        out[key] = (value + scale.view(-1, *([1] * (value.dim() - 1))) * eps) * masks[key]
    return out


def _masks(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    node = mask.unsqueeze(-1)
    pair = (mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(mask.shape[1], dtype=torch.bool)).unsqueeze(-1)
    return {"coords": node, "atoms": node, "charges": node, "bonds": pair}


class PaddedSet:
    """Molecules collated once, padded to the largest; :meth:`batch` trims to the batch's largest molecule."""

    def __init__(self, molecules) -> None:
        self.data = collate(list(molecules))
        self.sizes = self.data["mask"].sum(1)

    def __len__(self) -> int:
        return self.sizes.shape[0]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        n = int(self.sizes[index].max())
        d = self.data
        return {"coords": d["coords"][index, :n], "atom_types": d["atom_types"][index, :n],
                "charges": d["charges"][index, :n], "bonds": d["bonds"][index, :n, :n], "mask": d["mask"][index, :n]}


class EMA:
    """Exponential moving average of a model's parameters (buffers copied)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, new = list(self.model.parameters()), list(model.parameters())
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, new, alpha=1 - d)


# -- training ------------------------------------------------------------------------------------------
def load_data(seed: int = 0):
    """``(train molecules, val molecules)`` of the NCI conformer set."""
    from .dataset import build_dataset, train_val_split

    dataset = build_dataset()
    train_idx, val_idx = train_val_split(dataset.smiles)
    return [dataset[i] for i in train_idx], [dataset[i] for i in val_idx]


def train(args: argparse.Namespace, data=None) -> dict:
    """Run the recipe of the module docstring; ``data`` = ``(train, val)`` molecule lists (default: NCI)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen, rng = torch.Generator().manual_seed(args.seed), random.Random(args.seed)
    train_mols, val_mols = data if data is not None else load_data()
    earlier: dict = {"log": [], "stages": [], "val": []}
    if args.init:
        model = MoleculeEGNN.load(args.init).train()
        if (Path(args.init) / LOG).is_file():
            earlier = {**earlier, **json.loads((Path(args.init) / LOG).read_text())}
    else:
        overrides = json.loads(args.config) if args.config else {}
        model = MoleculeEGNN(EGNNConfig(**overrides)).train()
    out = Path(args.out)
    save_sizes(out, size_histogram(train_mols))
    trainset = PaddedSet(train_mols)
    val_batch = PaddedSet(val_mols[:128]).batch(torch.arange(min(128, len(val_mols)))) if val_mols else None
    ema = EMA(model, args.ema) if args.ema > 0 else None
    first = len(earlier["log"])
    offset = earlier["log"][-1]["seconds"] if earlier["log"] else 0.0
    stages = [*earlier.get("stages", []), {"first_step": first, **_recipe(args, model)}]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    options = {"time_dist": args.time, "self_cond": args.self_cond, "none_weight": args.none_weight,
               "align": not args.no_align, "cond_passes": args.cond_passes, "cond_lag": args.cond_lag,
               "cond_noise": args.cond_noise}
    log: list[dict] = []
    vals: list[dict] = list(earlier.get("val", []))
    start = saved = time.time()
    deadline = start + 60 * args.minutes if args.minutes else math.inf
    total = args.steps
    bar = tqdm(range(args.steps), desc="train", unit="step")
    order: list[int] = []
    for step in bar:
        if time.time() > deadline:
            break
        if args.minutes and step == 20:
            total = min(args.steps, int(20 * 60 * args.minutes / (time.time() - start)))
            bar.total = total
        if len(order) < args.batch:  # epochs without replacement
            order += rng.sample(range(len(trainset)), len(trainset))
        index, order = torch.tensor(order[:args.batch]), order[args.batch:]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, total, args.lr, args.warmup)
        loss, parts = flow_loss(model, trainset.batch(index), gen, **options)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        if ema is not None:
            ema.update(model)
        log.append({"step": first + step, "loss": float(loss.detach()), **parts, "grad_norm": round(grad, 4),
                    "lr": opt.param_groups[0]["lr"], "seconds": offset + time.time() - start})
        if step % args.log_every == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", x=f"{parts['coords']:.3f}")
        if val_batch is not None and args.val_every and (step + 1) % args.val_every == 0:
            vals.append({"step": first + step, **validation_loss(ema.model if ema else model, val_batch)})
            model.train()
        if time.time() > saved + 60 * args.save_minutes:
            _save(ema.model if ema else model, out, {"stages": stages, "log": earlier["log"] + log, "val": vals})
            saved = time.time()
    log = earlier["log"] + log
    final = ema.model if ema else model.eval()
    if val_batch is not None:
        vals.append({"step": log[-1]["step"] if log else 0, **validation_loss(final, val_batch)})
    _save(final, out, {"stages": stages, "log": log, "val": vals})
    summary = {"steps": len(log), "minutes": round(log[-1]["seconds"] / 60, 2) if log else 0.0,
               "final_loss": _tail_mean(log), "val_loss": vals[-1] if vals else None,
               "steps_per_s": round(len(log) / max(log[-1]["seconds"], 1e-9), 3) if log else None,
               "recipe": stages[-1],
               "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}}
    if args.eval_samples:
        t0 = time.perf_counter()
        summary["evaluation"] = evaluate_checkpoint(out, args.eval_samples, grid=args.grid, seed=args.seed)
        summary["evaluation"]["seconds"] = round(time.perf_counter() - t0, 1)
    (out / LOG).write_text(json.dumps({"summary": summary, "stages": stages, "log": log, "val": vals}))
    _loss_plot(log, vals, out / "loss.png")
    print(json.dumps(summary, indent=1))
    return summary


@torch.no_grad()
def validation_loss(model: MoleculeEGNN, batch: dict[str, torch.Tensor], seed: int = 1234) -> dict:
    """Loss parts on a fixed batch, times and noise (no self-conditioning): comparable across steps."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.02, 0.98, batch["mask"].shape[0])
    loss, parts = flow_loss(model, batch, gen, self_cond=0.0, t=t)
    return {"loss": float(loss), **parts}


@torch.no_grad()
def generate(model: MoleculeEGNN, sizes: list[int], *, steps: int = 100, grid: str = "linear", seed: int = 0,
             batch: int = 64, handle=None, solver: str = "euler", progress: bool = False) -> list:
    """Molecules of the given sizes sampled with ``steps`` ODE steps: each batch holds molecules of similar
    size (sorted), its noise drawn from ``seed`` and the batch's position. Returns Molecules in input order."""
    from .molecule import uncollate

    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    out: list = [None] * len(sizes)
    for b, lo in enumerate(tqdm(range(0, len(order), batch), desc="sample", disable=not progress)):
        idx = order[lo:lo + batch]
        mask = atom_mask([sizes[i] for i in idx])
        result = sample(model, mask, steps=steps, grid=grid, solver=solver, handle=handle,
                        generator=torch.Generator().manual_seed(seed * 100_003 + b))
        for i, m in zip(idx, uncollate(result.batch)):
            out[i] = m
    return out


def evaluate_checkpoint(folder: str | Path, n: int, *, steps: int = 100, grid: str = "linear", seed: int = 0,
                        batch: int = 64) -> dict:
    """Sample ``n`` molecules from the model saved in ``folder`` (sizes from its ``sizes.json``) and
    evaluate them (:func:`~forecache.science.evaluate.evaluate_molecules`)."""
    from .evaluate import evaluate_molecules

    model = MoleculeEGNN.load(folder)
    sizes = draw_sizes(load_sizes(folder), n, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    molecules = generate(model, sizes, steps=steps, grid=grid, seed=seed, batch=batch, progress=True)
    seconds = time.perf_counter() - start
    result = evaluate_molecules(molecules, posebusters=False)
    return {"steps": steps, "grid": grid, "sample_seconds": round(seconds, 2), **result}


def _recipe(args: argparse.Namespace, model: MoleculeEGNN) -> dict:
    return {**{k: v for k, v in vars(args).items() if k != "out"}, "model": asdict(model.config),
            "loss_weights": LOSS_WEIGHTS}


def _save(model: MoleculeEGNN, out: Path, log: dict) -> None:
    model.save(out)
    (out / LOG).write_text(json.dumps(log))


def _tail_mean(log: list[dict], n: int = 200) -> dict[str, float]:
    tail = log[-n:]
    keys = [k for k in ("loss", "coords", "atoms", "charges", "bonds") if tail and k in tail[0]]
    return {k: round(sum(e[k] for e in tail) / len(tail), 4) for k in keys}


def _loss_plot(log: list[dict], vals: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "coords", "atoms", "charges", "bonds"):
        pts = [(e["step"], e[key]) for e in log if key in e]
        if pts:
            steps, values = zip(*pts)
            k = max(1, len(values) // 200)  # a running mean keeps the plot readable
            smooth = [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]
            ax.plot(steps, smooth, lw=0.8, label=f"train {key}")
    if vals:
        ax.plot([v["step"] for v in vals], [v["loss"] for v in vals], "k.", label="val loss")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="molecule-flow training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    train(parse_args())
