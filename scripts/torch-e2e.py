#!/usr/bin/env python3
"""diffusers' own SD pipeline loop on the same card, for the end-to-end comparison column:
random weights from a diffusers config folder (configs/sd15), float16, CFG batch 2, DDIM, then the
VAE decode in float32 (diffusers' force_upcast) and in bfloat16. Text encoding is timed when
transformers is there. Skips itself (exit 0, one line) when diffusers is not installed.
Usage: python3 scripts/torch-e2e.py CONFIG_DIR OUT.json [SIZE] [STEPS]"""
import json, sys, time
import torch

try:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
except ImportError as e:
    print(f"torch-e2e: diffusers not installed ({e}); skipped")
    sys.exit(0)

cfg_dir, out_path = sys.argv[1], sys.argv[2]
size = int(sys.argv[3]) if len(sys.argv) > 3 else 512
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 50
dev, dt = "cuda", torch.float16
load = lambda name: json.load(open(f"{cfg_dir}/{name}"))
torch.manual_seed(0)
unet = UNet2DConditionModel.from_config(load("unet/config.json")).to(dev, dt).eval()
vae = AutoencoderKL.from_config(load("vae/config.json")).to(dev, torch.float32).eval()
sched = DDIMScheduler.from_config(load("scheduler/scheduler_config.json"))
text = None
try:
    from transformers import CLIPTextConfig, CLIPTextModel
    text = CLIPTextModel(CLIPTextConfig(**load("text_encoder/config.json"))).to(dev, dt).eval()
except Exception as e:  # transformers missing or a config it does not take
    print(f"torch-e2e: text encoder not timed ({e})")
ctx = unet.config.cross_attention_dim
lat = size // 8
ids = torch.randint(0, 49408, (2, 77), device=dev)
rows = []

def sync_time(fn):
    torch.cuda.synchronize(); t0 = time.perf_counter(); r = fn(); torch.cuda.synchronize()
    return r, time.perf_counter() - t0

@torch.no_grad()
def encode():
    return text(ids)[0] if text is not None else torch.randn(2, 77, ctx, device=dev, dtype=dt)

@torch.no_grad()
def denoise(emb, n):
    sched.set_timesteps(n)
    x = torch.randn(1, unet.config.in_channels, lat, lat, device=dev, dtype=dt)
    for t in sched.timesteps:
        e = unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample
        u, c = e.chunk(2)
        x = sched.step(u + 7.5 * (c - u), t, x).prev_sample
    return x

@torch.no_grad()
def decode(x, vdt):
    return vae.decode(x.to(vdt) / vae.config.scaling_factor).sample

emb = encode(); decode(denoise(emb, 2), torch.float32)  # warm-up
x = torch.randn(2, unet.config.in_channels, lat, lat, device=dev, dtype=dt)
tt = torch.tensor(500, device=dev)
with torch.no_grad():
    for _ in range(3): unet(x, tt, encoder_hidden_states=emb)
    _, s = sync_time(lambda: [unet(x, tt, encoder_hidden_states=emb) for _ in range(10)])
rows.append({"name": f"U-Net step {size}x{size} batch 2", "seconds": s / 10})
emb, te = sync_time(encode)
lat_out, td = sync_time(lambda: denoise(emb, steps))
_, tv32 = sync_time(lambda: decode(lat_out, torch.float32))
rows.append({"name": f"{size}x{size}, {steps} steps, CFG 7.5, end to end (VAE float32)", "seconds": te + td + tv32,
             "detail": f"encode {te:.3f} s, denoise {td:.3f} s, decode {tv32:.3f} s"})
vae.to(torch.bfloat16)
decode(lat_out, torch.bfloat16)
_, tvb = sync_time(lambda: decode(lat_out, torch.bfloat16))
rows.append({"name": f"{size}x{size}, {steps} steps, CFG 7.5, end to end (VAE bfloat16)", "seconds": te + td + tvb,
             "detail": f"decode {tvb:.3f} s"})
rows.append({"name": "peak GiB (torch.cuda.max_memory_allocated)", "seconds": 0, "detail": f"{torch.cuda.max_memory_allocated() / 2**30:.2f}"})
import diffusers
for r in rows: print(f"diffusers {diffusers.__version__}  {r['name']:<60} {r['seconds']:.4f} s  {r.get('detail', '')}")
json.dump({"diffusers": diffusers.__version__, "torch": torch.__version__, "rows": rows}, open(out_path, "w"), indent=1)
