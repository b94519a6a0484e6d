"""Stage 1 of models/llada-tasks, kept as the record of what ran (not part of the library).

A drills-only loop: every value of a drill masked, the key pool grown from 10 to 100 keys and then
the contexts from 2 to 64 pairs each time the mean value-token accuracy of the last 30 drills near
the top passes 0.9. Ran as

    python stage1_drills.py --minutes 25 --out STAGE1     # 4 layers, 1500-token batches, lr 1e-3, 1 thread

and was stopped after 3,023 steps (8 minutes; its console output is stage1_drills.log). The library's
training script does the same with ``--mix 1 0 0 0 --drill 1 --drill-mask all --kv-keys 10 --kv-advance
LOSS``, except that it judges on the loss and draws context sizes uniformly.
"""
import argparse, random, time, torch, torch.nn.functional as F
import forecache.dllm.reference.tasks as T
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.model import LLaDAModel
from forecache.dllm.checkpoint import save_llada, load_llada
from forecache.dllm.reference.train import encode, REFERENCE_CONFIG
from forecache.dllm.reference.vocab import MASK_ID
ALL = T.KEYS
p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=1500)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--minutes", type=float, default=20)
p.add_argument("--keys0", type=int, default=10)
p.add_argument("--thresh", type=float, default=0.9)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", default="ckpt")
p.add_argument("--init", default=None)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
model = load_llada(a.init, dtype=torch.float32).train() if a.init else LLaDAModel(LLaDAConfig.from_dict(dict(REFERENCE_CONFIG, n_layers=a.layers))).train()
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.95))
rng = random.Random(0); t0 = time.time(); keys, high = a.keys0, 2; recent = []; step = 0
while time.time() - t0 < 60 * a.minutes:
    T.KEYS = ALL[:keys]
    pairs = rng.randint(max(2, high - high // 4), high) if rng.random() < 0.7 else rng.randint(2, high)
    pairs = min(pairs, keys)
    rowlen = 5 * pairs + 6 * min(12, pairs)
    exs = [T.kv_drill(rng, pairs, 12) for _ in range(max(2, a.tokens // rowlen))]
    ids, mask, width = encode(exs, None)
    resp = ids[:, width:]
    vals = torch.tensor([T.drill_values(e.answer) for e in exs])
    noisy = ids.clone(); noisy[:, width:] = torch.where(vals, torch.full_like(resp, MASK_ID), resp)
    pos = torch.arange(width, ids.shape[1]).expand(ids.shape[0], -1)
    logits = model(noisy, mask, logits_at=pos).float()
    ce = F.cross_entropy(logits.transpose(1, 2), resp, reduction="none")
    loss = (ce * vals).sum() / vals.sum()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    acc = float(((logits.argmax(-1) == resp) & vals).sum() / vals.sum())
    if pairs >= high - high // 4:
        recent = (recent + [acc])[-30:]
        if len(recent) == 30 and sum(recent) / 30 > a.thresh:
            if keys < 100: keys = min(100, int(keys * 1.5))
            elif high < 64: high = min(64, max(high + 1, round(high * 1.25)))
            recent = []
            print(f"== step {step} advance: keys {keys} pairs {high} {time.time()-t0:.0f}s", flush=True)
            save_llada(model, a.out)
    if step % 200 == 0:
        print(f"step {step} keys {keys} high {high} pairs {pairs} loss {loss.item():.3f} acc {acc:.2f} {time.time()-t0:.0f}s", flush=True)
    step += 1
save_llada(model, a.out)
