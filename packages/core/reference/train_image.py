"""Train the Shapes reference model (a tiny FluxTransformer2DModel) by rectified flow.

    python -m forecache.core.reference.train_image --out models/shapes-flux --minutes 5

Recipe (as Flux / SD3): x_t = (1 − t)·x0 + t·ε with t ~ logit-normal(0, 1) then shifted by
``--time-shift`` mu (t ← e^mu·t / (1 + (e^mu − 1)·t), the shift FluxPipeline's schedule applies at
256 tokens, mu = 0.5, so training sees the noise levels sampling visits); the model gets
``timestep = t`` (sigma, as FluxPipeline passes t/1000) and predicts v = ε − x0 under an MSE loss.
The condition is dropped (replaced by the empty prompt) with probability ``--cond-drop`` so
classifier-free guidance is available at sampling time. AdamW, linear warm-up then cosine decay to
10% over the run (the run's length is the first of ``--steps`` and ``--minutes`` to be reached, so
the schedule follows whichever ends it), an EMA of the weights that is what gets saved, TF32 matmuls on
CUDA (``--precision bf16`` for autocast). Data is generated on the fly (``shapes.make_batch``), never repeated.

Writes to ``--out``: ``model.safetensors`` (EMA weights, bf16), ``config.json`` (model, encoder,
recipe, final loss, accuracy), ``loss.png``, ``samples.png`` and ``train_log.json``; then prints
the conditioning accuracy of ``--eval-samples`` samples at ``--eval-steps`` steps, measured on the
saved (bf16-rounded) weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .evaluate import evaluate, grid_picks
from .model import (
    REFERENCE_CONFIG,
    build_model,
    image_ids,
    load_reference,
    pack_images,
    save_reference,
    text_ids,
)
from .pipeline import ShapesPipeline
from .plots import loss_curve, sample_grid
from .shapes import ALL_CONDITIONS, make_batch, render, sample_conditions
from .text import ShapesTextEncoder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/shapes-flux")
    p.add_argument("--steps", type=int, default=100_000, help="at most this many optimiser steps")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--time-shift", type=float, default=0.5, help="mu of the Flux time shift (0: none)")
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("tf32", "bf16"), default="tf32",
                   help="CUDA matmul precision: fp32 weights with TF32 matmuls, or bf16 autocast")
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--eval-steps", type=int, default=28)
    p.add_argument("--eval-cfg", type=float, nargs="*", default=[2.0], help="also evaluate with these CFG scales")
    return p.parse_args(argv)


class ConditionTable:
    """Encodings of the 60 conditions and the null prompt, kept on the device (index 60 = null)."""

    def __init__(self, encoder: ShapesTextEncoder, device: torch.device) -> None:
        prompts = [c.description for c in ALL_CONDITIONS] + [""]
        self.states, self.pooled = encoder(prompts, device)
        self.index = {c: i for i, c in enumerate(ALL_CONDITIONS)}
        self.null = len(ALL_CONDITIONS)


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1 as ``progress`` goes 0 → 1."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed)
    noise_gen = torch.Generator(device).manual_seed(args.seed + 1)
    encoder = ShapesTextEncoder()
    table = ConditionTable(encoder, device)
    model = build_model(args.seed).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    ema_params = list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    img_ids, txt_ids = image_ids(device), text_ids(table.states.shape[1], device)
    use_bf16 = device.type == "cuda" and args.precision == "bf16"
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=use_bf16)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    print(f"model: {sum(p.numel() for p in params) / 1e6:.2f} M parameters on {device}; {json.dumps(vars(args))}")

    losses: list[float] = []
    budget = args.minutes * 60 if args.minutes else math.inf
    start = time.perf_counter()
    bar = tqdm(total=args.steps if budget == math.inf else None, desc="train", mininterval=2.0)
    step = 0
    while step < args.steps:
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            break
        conditions = sample_conditions(args.batch, data_gen)
        x0 = pack_images(render(conditions, data_gen, device))
        idx = torch.tensor([table.index[c] for c in conditions])
        idx[torch.rand(args.batch, generator=data_gen) < args.cond_drop] = table.null
        idx = idx.to(device)
        t = torch.sigmoid(torch.randn(args.batch, device=device, generator=noise_gen))
        t = math.exp(args.time_shift) * t / (1 + (math.exp(args.time_shift) - 1) * t)
        eps = torch.randn(x0.shape, device=device, generator=noise_gen)
        xt = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * eps
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(step, max(step / args.steps, elapsed / budget), args.warmup)
        with autocast:
            v = model(
                hidden_states=xt, timestep=t, encoder_hidden_states=table.states[idx],
                pooled_projections=table.pooled[idx], img_ids=img_ids, txt_ids=txt_ids, return_dict=False,
            )[0]
        loss = torch.nn.functional.mse_loss(v.float(), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - min(args.ema, (1 + step) / (10 + step)))
        losses.append(loss.detach())
        step += 1
        bar.update(1)
        if step % args.log_every == 0:
            recent = torch.stack(losses[-args.log_every :]).mean().item()
            bar.set_postfix(loss=f"{recent:.4f}")
            bar.write(f"step {step} loss {recent:.4f} lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s")
    bar.close()
    seconds = time.perf_counter() - start
    losses_f = torch.stack(losses).float().cpu().tolist()
    final = sum(losses_f[-500:]) / len(losses_f[-500:])
    print(f"trained {step} steps in {seconds:.0f}s; final loss (mean of last {min(500, step)} steps) {final:.4f}")
    return {"model": ema, "encoder": encoder, "losses": losses_f, "steps": step, "seconds": seconds, "final_loss": final}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    result = train(args)
    hardware = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"
    recipe = {
        "training": {
            "command": "python -m forecache.core.reference.train_image " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and not isinstance(v, list)
            ),
            "args": vars(args), "steps": result["steps"], "seconds": round(result["seconds"], 1),
            "hardware": hardware, "torch": torch.__version__, "final_loss": round(result["final_loss"], 5),
            "reference_config": {k: v for k, v in REFERENCE_CONFIG.items() if k != "axes_dims_rope"},
        }
    }
    save_reference(result["model"], result["encoder"], out, extra=recipe)
    (out / "train_log.json").write_text(json.dumps({"loss": [round(x, 5) for x in result["losses"]]}) + "\n")
    loss_curve(result["losses"], out / "loss.png")

    model, encoder = load_reference(out, device=args.device)  # evaluate exactly what was saved
    pipe = ShapesPipeline(model, encoder)
    evaluation = {}
    for scale in [None, *args.eval_cfg]:
        t0 = time.perf_counter()
        accuracy, images, conditions = evaluate(pipe, args.eval_samples, args.eval_steps, guidance_scale=scale)
        key = "no_cfg" if scale is None else f"cfg_{scale:g}"
        evaluation[key] = {**accuracy, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"conditioning accuracy ({key}, {args.eval_steps} steps, {args.eval_samples} samples): {json.dumps(accuracy)}")
        if scale is None:
            picks = grid_picks() if len(images) >= len(ALL_CONDITIONS) else list(range(min(len(images), 24)))
            sample_grid(images[picks], [conditions[i] for i in picks], out / "samples.png")
    truth, truth_conditions = make_batch(args.eval_samples, args.seed)
    from .detector import conditioning_accuracy

    evaluation["ground_truth"] = conditioning_accuracy(truth, truth_conditions)
    config = json.loads((out / "config.json").read_text())
    config["evaluation"] = {"device": hardware, "steps": args.eval_steps, **evaluation}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps(config["evaluation"], indent=2))


if __name__ == "__main__":
    main()
