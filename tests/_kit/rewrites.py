"""Function-preserving rewrites of a Llama state dict, as a leaker who read the spec would make
them (tests, bench/attacks.py and the canonicalisation vectors): the verifier must undo them."""

from __future__ import annotations

import numpy as np
import torch


def rewrite(state: dict[str, torch.Tensor], cfg, rng: np.random.Generator, *, heads: bool = False,
            mlp: bool = False, resid: bool = False, scale: bool = False, dummy: int = 0) -> dict[str, torch.Tensor]:
    """A model with the same outputs: permuted heads (GQA groups kept, v/o head dims permuted),
    permuted MLP units, a signed permutation of the residual stream, per-channel rescalings (norm
    weights folded into the readers, MLP up/down, v/o channels, q/k RoPE pairs scaled and rotated),
    and ``dummy`` MLP units that contribute nothing."""
    s = {k: v.clone().to(torch.float64) for k, v in state.items()}
    hid, nh, nkv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or hid // nh
    per = nh // nkv
    layers = cfg.num_hidden_layers
    pre = "model.layers"
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    for i in range(layers):
        q, k, v = (f"{pre}.{i}.self_attn.{p}_proj.weight" for p in "qkv")
        o = f"{pre}.{i}.self_attn.o_proj.weight"
        gate, up, down = (f"{pre}.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down"))
        ln1, ln2 = f"{pre}.{i}.input_layernorm.weight", f"{pre}.{i}.post_attention_layernorm.weight"
        if heads:
            gperm = rng.permutation(nkv)
            qorder = np.concatenate([g * per + rng.permutation(per) for g in gperm])
            dperm = [rng.permutation(hd) for _ in range(nkv)]  # v/o head dims, per kv group (new order)
            kr = s[k].reshape(nkv, hd, hid)[t(gperm)]
            vr = s[v].reshape(nkv, hd, hid)[t(gperm)]
            vr = torch.stack([vr[g][t(dperm[g])] for g in range(nkv)])
            qr = s[q].reshape(nh, hd, hid)[t(qorder)]
            orr = s[o].reshape(hid, nh, hd)[:, t(qorder)]
            orr = torch.stack([orr[:, h][:, t(dperm[h // per])] for h in range(nh)], dim=1)
            s[k], s[v], s[q], s[o] = kr.reshape(-1, hid), vr.reshape(-1, hid), qr.reshape(-1, hid), orr.reshape(hid, -1)
        if scale:
            # fold the attention norm into q, k, v; scale the MLP norm per channel
            w1 = s[ln1].clone()
            for name in (q, k, v):
                s[name] = s[name] * w1
            s[ln1] = torch.ones_like(w1)
            c2 = t(rng.uniform(0.5, 2.0, hid) * rng.choice([-1.0, 1.0], hid))
            s[ln2] = s[ln2] / c2
            for name in (gate, up):
                s[name] = s[name] * c2
            a = t(rng.uniform(0.5, 2.0, s[up].shape[0]) * rng.choice([-1.0, 1.0], s[up].shape[0]))
            s[up] = s[up] * a[:, None]
            s[down] = s[down] / a
            b = t(rng.uniform(0.5, 2.0, nkv * hd) * rng.choice([-1.0, 1.0], nkv * hd))
            s[v] = s[v] * b[:, None]
            s[o] = s[o] / b.reshape(nkv, 1, hd).expand(nkv, per, hd).reshape(-1)
            # RoPE pairs (j, j + hd/2) of each kv group: q pair × c·R(α), k pair × R(α)/c
            half = hd // 2
            c = rng.uniform(0.5, 2.0, (nkv, half))
            ang = rng.uniform(-np.pi, np.pi, (nkv, half))
            qr, kr = s[q].reshape(nh, hd, hid), s[k].reshape(nkv, hd, hid)
            for g in range(nkv):
                cos, sin = t(np.cos(ang[g]))[:, None], t(np.sin(ang[g]))[:, None]
                k1, k2 = kr[g, :half].clone(), kr[g, half:].clone()
                kr[g, :half] = (cos * k1 - sin * k2) / t(c[g])[:, None]
                kr[g, half:] = (sin * k1 + cos * k2) / t(c[g])[:, None]
                for h in range(g * per, (g + 1) * per):
                    q1, q2 = qr[h, :half].clone(), qr[h, half:].clone()
                    qr[h, :half] = (cos * q1 - sin * q2) * t(c[g])[:, None]
                    qr[h, half:] = (sin * q1 + cos * q2) * t(c[g])[:, None]
            s[q], s[k] = qr.reshape(-1, hid), kr.reshape(-1, hid)
        if mlp:
            perm = t(rng.permutation(s[gate].shape[0]))
            s[gate], s[up], s[down] = s[gate][perm], s[up][perm], s[down][:, perm]
        if dummy:
            g_rows = t(rng.standard_normal((dummy, hid)) * float(s[gate].std()))
            u_rows = t(rng.standard_normal((dummy, hid)) * float(s[up].std()))
            s[gate], s[up] = torch.cat([s[gate], g_rows]), torch.cat([s[up], u_rows])
            s[down] = torch.cat([s[down], torch.zeros(hid, dummy, dtype=s[down].dtype)], dim=1)
    if resid:
        perm = t(rng.permutation(hid))
        sign = t(rng.choice([-1.0, 1.0], hid))
        s["model.embed_tokens.weight"] = s["model.embed_tokens.weight"][:, perm] * sign
        if "lm_head.weight" in s:
            s["lm_head.weight"] = s["lm_head.weight"][:, perm] * sign
        for name in list(s):
            if name.endswith("norm.weight"):
                s[name] = s[name][perm]
            elif any(name.endswith(f"{p}_proj.weight") for p in ("q", "k", "v", "gate", "up")):
                s[name] = s[name][:, perm] * sign
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                s[name] = s[name][perm] * sign[:, None]
    return s
