"""Probe: how local a checkpoint's level-0 denoiser is (own-token share of input sensitivity).

For shapes clips noised at σ, the share of one output token's input sensitivity (squared input
gradient of a random projection of its output) that comes from its own input token. Near 1.0, the
tokens do not exchange information and the sampler scatters token-sized blobs
(docs/experiments/decisions-evidence.md, "Token mixing").

    python scripts/probes/token_locality.py src/hpdm/assets/demo runs/demo
"""

import sys

import torch
from _heldout import level0_clips
from einops import rearrange

from hpdm.pyramid import Boxes


def own_token_share(ckpt: str, sigmas=(0.3, 1.0, 3.0), num: int = 4) -> dict[float, float]:
    model, _, diff, x0, labels = level0_clips(ckpt, num)
    x0 = x0 / diff.sigma_in[0]  # level 0, in its scaled space
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    boxes = Boxes(torch.zeros(num, 1, 3), torch.ones(num, 1, 3))
    nf, nh, nw = model.grid
    cf, ch, cw = model.cube
    token = (nf // 2, nh // 2, nw // 2)
    result = {}
    for s in sigmas:
        sigma = torch.full((num, 1), s)
        c_in = diff.coefficients(sigma, 1)[2]
        c_noise = diff.coefficients(sigma, 1)[3]
        inp = (c_in * (x0 + s * noise)[:, None]).requires_grad_(True)
        out = model(inp, c_noise, boxes, labels)[:, 0]
        f, h, w = (a * c for a, c in zip(token, model.cube))
        o = out[:, :, f : f + cf, h : h + ch, w : w + cw]
        (grad,) = torch.autograd.grad((o * torch.randn(o.shape, generator=g)).sum(), inp)
        energy = rearrange(
            grad[:, 0].square(), "b c (f a) (h p) (w q) -> b f h w (a p q c)", a=cf, p=ch, q=cw
        ).sum((0, -1))
        result[s] = (energy[token] / energy.sum()).item()
    return result


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for ck in sys.argv[1:]:
        shares = own_token_share(ck)
        print(ck, "  ".join(f"σ={s}: own-token share {v:.3f}" for s, v in shares.items()))
