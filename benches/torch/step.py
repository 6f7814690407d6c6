"""PyTorch training steps of one of our configs, timed: the baseline of benches/cpu-step.sh.

    step.py --config benches/cpu/dit-moe-s4.toml --steps 10 --threads 2

Each step is the step of `Trainer::step` (experiments/src/train/trainer.rs), in PyTorch:

1. a batch of random data of the model's shape, x0 ~ N(0, 1) [B, C, H, W] and random labels
   (data loading is not what we measure: ours draws from an in-memory dataset, this draws
   random numbers; both are a negligible part of a step);
2. rectified flow as diffusion/src/flow.rs: noise ε, t = sigmoid(n), n ~ N(0, 1) per image,
   z_t = (1 − t)·x0 + t·ε, the model told t·time_scale, target velocity ε − x0;
3. forward with label dropout (class_dropout_prob), loss = MSE over the first in_channels
   output channels (the learned-σ half is ignored, as ours does for flow) + the MoE balance
   loss;
4. backward, `torch.nn.utils.clip_grad_norm_(grad_clip)`, `torch.optim.AdamW` (lr with our
   linear warmup, betas, eps, weight_decay from the config, or our defaults), then an EMA
   update of the weights as DiT's `update_ema` (decay ema_decay).

Prints one JSON line per step (`step_s` its wall time), then a summary line: the median step
time without the first step (warmup), peak memory as max RSS, the parameter count.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from ditmoe_torch import ConfigError, DiT, model_config, parameter_count, read_toml

# Defaults of our TrainConfig / AdamWConfig (experiments/src/config.rs, nn/src/optim.rs).
DEFAULTS = {"grad_clip": 1.0, "ema_decay": 0.999, "warmup_steps": 0, "seed": 0,
            "adamw": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}}


def train_settings(config):
    """The training knobs of a config file, with our defaults; refuses what ours would train
    differently (a DDPM objective, a cosine schedule)."""
    objective = config.get("objective", {})
    if objective.get("kind") != "flow":
        sys.exit(f"objective.kind: only flow is implemented here, found {objective.get('kind')!r}")
    if config.get("lr_decay", "constant") != "constant":
        sys.exit("lr_decay: only constant is implemented here")
    adamw = {**DEFAULTS["adamw"], **config.get("adamw", {})}
    return {
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "warmup_steps": config.get("warmup_steps", DEFAULTS["warmup_steps"]),
        "grad_clip": config.get("grad_clip", DEFAULTS["grad_clip"]),
        "ema_decay": config.get("ema_decay", DEFAULTS["ema_decay"]),
        "seed": config.get("seed", DEFAULTS["seed"]),
        "time_scale": objective.get("time_scale", 1.0),
        "betas": tuple(adamw["betas"]),
        "eps": adamw["eps"],
        "weight_decay": adamw["weight_decay"],
    }


def learning_rate(peak, step, warmup):
    """Linear warmup from 0, then constant (`learning_rate` in nn/src/optim.rs)."""
    return peak * (step + 1) / warmup if step < warmup else peak


@torch.no_grad()
def update_ema(ema_params, params, decay):
    """DiT's `update_ema`: ema ← decay·ema + (1 − decay)·p, tensor by tensor."""
    for ema, p in zip(ema_params, params):
        ema.mul_(decay).add_(p, alpha=1 - decay)


def rectified_flow(x0, time_scale):
    """diffusion/src/flow.rs: (z_t, model time, target velocity)."""
    noise = torch.randn_like(x0)
    t = torch.sigmoid(torch.randn(x0.shape[0]))
    tt = t.view(-1, 1, 1, 1)
    return (1 - tt) * x0 + tt * noise, t * time_scale, noise - x0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a training config (TOML)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adamw", choices=["default", "foreach", "fused"], default="default",
                        help="torch.optim.AdamW implementation: the default (foreach=None, "
                             "which on CPU is the per-tensor loop), foreach=True or fused=True")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # Max RSS so far: the Python interpreter and the torch libraries, before any model memory.
    rss_runtime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = read_toml(args.config)
    try:
        cfg = model_config(config["model"])
    except ConfigError as e:
        sys.exit(f"{args.config}: {e}")
    s = train_settings(config)
    torch.manual_seed(s["seed"])
    model = DiT(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    ema_params = [p.detach().clone() for p in params]  # DiT keeps a deepcopy of the model
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.adamw]
    optimizer = torch.optim.AdamW(params, lr=s["lr"], betas=s["betas"], eps=s["eps"],
                                  weight_decay=s["weight_decay"], **impl)
    b, c, size = s["batch_size"], cfg["in_channels"], cfg["input_size"]

    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        x0 = torch.randn(b, c, size, size)
        y = torch.randint(0, cfg["num_classes"], (b,))
        z, model_time, target = rectified_flow(x0, s["time_scale"])
        out, aux = model(z, model_time, y, drop_labels=True)
        loss = (out[:, :c] - target).pow(2).mean()
        total = loss if aux is None else loss + aux
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if s["grad_clip"] > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, s["grad_clip"]).item()
        else:
            grad_norm = None
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(s["lr"], step, s["warmup_steps"])
        optimizer.step()
        update_ema(ema_params, params, s["ema_decay"])
        times.append(time.perf_counter() - start)
        print(json.dumps({"step": step + 1, "step_s": times[-1], "loss": loss.item(),
                          "aux_loss": None if aux is None else aux.item(),
                          "grad_norm": grad_norm}), flush=True)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    timed = times[1:] or times
    print(json.dumps({
        "summary": True,
        "config": args.config,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "adamw": args.adamw,
        "params": parameter_count(model),
        "batch_size": b,
        "steps": args.steps,
        "median_step_s": statistics.median(timed),
        "first_step_s": times[0],
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rss_after_import_mib": rss_runtime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
    }), flush=True)


if __name__ == "__main__":
    main()
