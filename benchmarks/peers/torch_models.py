"""The same GPT (CPU recipe shape), conv VAE and DCGAN written in PyTorch, for side-by-side timing
with `flaxgen bench --peers` (`torch_peers.py` runs each in a worker process). `build` returns
(name, run) where run(steps) trains that many steps on synthetic data and returns seconds per
step (ending in a synchronisation).

Each is written as a user tuning for speed would: Adam with torch's fused update (one kernel over
all parameters, on CPU and CUDA), and on CUDA a torch.compile variant with CUDA graphs too."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.peers.torch_peers import MODELS, VARIANTS


def _timed(step, device):
    def run(steps: int) -> float:
        begin = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - begin) / steps
    return run


def _compiled(module, mode):
    """The module as the step runs it: eager (mode None) or torch.compile'd with that mode."""
    return module if mode is None else torch.compile(module, mode=mode)


# --- GPT ---------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        # tanh GELU: the function flaxgen's GPT (and GPT-2) uses
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, block, layers, heads, d):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.embed(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T


def gpt_step(batch, device, compile_mode, micro_batches=1, vocab=128, block=64, layers=4, heads=4, d=128,
             dtype=torch.float32):
    model = GPT(vocab, block, layers, heads, d).to(device)
    forward = _compiled(model, compile_mode)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99), fused=True)
    data = torch.randint(0, 65, (100_000,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        starts = torch.randint(0, data.numel() - block - 1, (batch,), device=device, generator=generator)
        window = data[starts[:, None] + torch.arange(block + 1, device=device)]
        optimizer.zero_grad(set_to_none=True)
        for part in window.chunk(micro_batches):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = forward(part[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), part[:, 1:].reshape(-1))
            (loss / micro_batches).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


# --- conv VAE ----------------------------------------------------------------------------------

class ConvVAE(nn.Module):
    def __init__(self, latent=2):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(7 * 7 * 64, 16), nn.ReLU())
        self.mean, self.logvar = nn.Linear(16, latent), nn.Linear(16, latent)
        self.dec_in = nn.Linear(latent, 7 * 7 * 64)
        self.dec = nn.Sequential(nn.ConvTranspose2d(64, 64, 3, 2, 1, output_padding=1), nn.ReLU(),
                                 nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
                                 nn.ConvTranspose2d(32, 1, 3, 1, 1))

    def forward(self, x):
        h = self.enc(x)
        mean, logvar = self.mean(h), self.logvar(h)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        logits = self.dec(F.relu(self.dec_in(z)).view(-1, 64, 7, 7))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        kl = 0.5 * (logvar.exp() + mean**2 - 1 - logvar).sum(1)
        return (recon + kl).mean()


def conv_vae_step(batch, device, compile_mode, micro_batches=1, dtype=torch.float32):
    model = ConvVAE().to(device)
    loss_fn = _compiled(model, compile_mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    data = torch.rand(4096, 1, 28, 28, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        x = data[torch.randint(0, data.shape[0], (batch,), device=device, generator=generator)]
        optimizer.zero_grad(set_to_none=True)
        for part in x.chunk(micro_batches):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = loss_fn(part)
            (loss / micro_batches).backward()
        optimizer.step()
    return step


# --- DCGAN -------------------------------------------------------------------------------------

class ChannelNorm(nn.Module):
    """LayerNorm over channels at each pixel (as flax's LayerNorm on NHWC)."""
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Generator(nn.Module):
    def __init__(self, latent=64, width=32):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(latent, 7 * 7 * 2 * width)
        self.norm0 = ChannelNorm(2 * width)
        self.up1, self.norm1 = nn.ConvTranspose2d(2 * width, width, 4, 2, 1), ChannelNorm(width)
        self.up2 = nn.ConvTranspose2d(width, 1, 4, 2, 1)

    def forward(self, z):
        x = F.relu(self.norm0(self.inp(z).view(-1, 2 * self.width, 7, 7)))
        x = F.relu(self.norm1(self.up1(x)))
        return torch.sigmoid(self.up2(x))


class Discriminator(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, 2 * width, 4, 2, 1),
                                 nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(7 * 7 * 2 * width, 1))

    def forward(self, x):
        return self.net(x)[:, 0]


def dcgan_step(batch, device, compile_mode, micro_batches=1, latent=64, r1_gamma=1.0, dtype=torch.float32):
    g, d = Generator(latent).to(device), Discriminator().to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    g_fwd = _compiled(g, compile_mode)
    d_fwd = d  # R1's double backward does not compile
    data = torch.rand(4096, 1, 28, 28, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    part = batch // micro_batches

    def step():
        # each player's gradient summed over the micro-batches, as in our step
        reals = data[torch.randint(0, data.shape[0], (batch,), device=device, generator=generator)]
        opt_d.zero_grad(set_to_none=True)
        for real in reals.chunk(micro_batches):
            real.requires_grad_(True)
            with autocast():
                fake = g_fwd(torch.randn(part, latent, device=device)).detach()
                real_logits, fake_logits = d_fwd(real).float(), d_fwd(fake).float()
            loss_d = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            loss_d = loss_d + 0.5 * r1_gamma * grad.pow(2).flatten(1).sum(1).mean()
            (loss_d / micro_batches).backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        for _ in range(micro_batches):
            with autocast():
                fake_logits = d_fwd(g_fwd(torch.randn(part, latent, device=device))).float()
            (F.softplus(-fake_logits).mean() / micro_batches).backward()
        opt_g.step()
    return step


STEPS = {"gpt_cpu": gpt_step, "conv_vae": conv_vae_step, "dcgan": dcgan_step}
# torch_peers.MODELS names them without importing torch; the two lists must not drift apart
assert tuple(STEPS) == MODELS, (tuple(STEPS), MODELS)


def build(model: str, batch: int, dtype: str, micro_batches: int, variant: str, device_type: str):
    """(name, run) for one variant on `device_type` ("cpu" or "cuda": where our step runs),
    compiled and warmed up, so that a failure shows here. Eager and torch.compile run the batch
    whole; "eager split" runs it as our step does, in micro_batches parts. "compile+cudagraphs"
    (mode "reduce-overhead") removes the launch cost that dominates these small steps on a GPU."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"flaxgen runs on a GPU but torch {torch.__version__} sees no CUDA device "
                           f"(a CPU build?): install a CUDA build of torch to compare on the GPU")
    device = torch.device(device_type)
    torch.manual_seed(0)
    compile_mode, split = VARIANTS[variant]
    micro = micro_batches if split else 1
    name = f"torch {torch.__version__.split('+')[0]} {variant.split()[0]}"
    if micro > 1:
        name += f" {micro}x{batch // micro}"
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    run = _timed(STEPS[model](batch, device, compile_mode, micro_batches=micro, dtype=torch_dtype), device)
    run(3)  # compile / warm up here (CUDA graphs record on the third call)
    return name, run
