"""Real-size check on a GPU: a FluxTransformer2DModel with FLUX.1-dev's configuration (19 dual-stream
and 38 single-stream blocks, width 3072) and random weights, 28 Euler steps at 1024x1024
(4096 image tokens, 512 text tokens), uncached against a few presets.

Random weights make the images meaningless, so this checks the CUDA paths, memory and wall-clock
speedup, not quality (quality is measured on the trained reference models by the benchmarks).
Needs a GPU with about 40 GB free. Usage: python examples/real_size_flux.py [--steps 28]
"""

import argparse
import time

import torch
from diffusers import FluxTransformer2DModel

import forecache.core as fc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    with dev:
        model = FluxTransformer2DModel(
            in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        ).to(dtype).eval()
        for prm in model.parameters():  # keep 57 random blocks numerically tame in bf16
            prm.data.mul_(0.5)
        x0 = torch.randn(1, 4096, 64, dtype=dtype)
        ctx = torch.randn(1, 512, 4096, dtype=dtype)
        pooled = torch.randn(1, 768, dtype=dtype)
        img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(64.0), torch.arange(64.0), indexing="ij"), -1).reshape(-1, 3)
        txt_ids = torch.zeros(512, 3)
        guidance = torch.full((1,), 3.5)
    sigmas = torch.linspace(1.0, 1.0 / args.steps, args.steps).tolist() + [0.0]

    def run():
        x = x0.clone()
        with torch.no_grad():
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                v = model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                          timestep=torch.full((1,), s, device=dev, dtype=dtype), img_ids=img_ids, txt_ids=txt_ids,
                          guidance=guidance, return_dict=False)[0]
                x = x + (s_next - s) * v
        torch.cuda.synchronize()
        return x

    def timed():
        t0 = time.perf_counter()
        out = run()
        return time.perf_counter() - t0, out

    run()  # warm-up
    policies = [fc.teacache(0.4), fc.magcache(), fc.fbcache(0.12), fc.taylorseer(), fc.freqca(), fc.speca()]
    print(f"{torch.cuda.get_device_name()}: {args.steps} steps, 4096+512 tokens, bf16")
    print(f"{'method':<12}{'wall s':>8}{'speedup':>9}{'FLOPs speedup':>15}{'rel. err':>10}{'cache GiB':>11}")
    for policy in policies:
        handle = fc.apply(model, policy)  # one counted run for the FLOPs ratio
        handle.set_schedule(sigmas[:-1])
        run()
        stats = handle.stats()
        handle.remove()
        base = []
        cached = []
        for _ in range(args.repeats):  # interleave baseline and method, keep the median
            base.append(timed())
            handle = fc.apply(model, policy, count_flops=False)
            handle.set_schedule(sigmas[:-1])
            cached.append(timed())
            handle.remove()
        b = sorted(base, key=lambda r: r[0])[len(base) // 2]
        c = sorted(cached, key=lambda r: r[0])[len(cached) // 2]
        err = float((c[1].float() - b[1].float()).norm() / b[1].float().norm())
        print(f"{policy.name:<12}{c[0]:>8.2f}{b[0] / c[0]:>8.2f}x{1 / stats.compute_ratio:>14.2f}x{err:>10.4f}"
              f"{stats.peak_cache_bytes / 2**30:>11.2f}   (uncached {b[0]:.2f} s)")


if __name__ == "__main__":
    main()
