"""Shows that the PyTorch baseline (ditmoe_torch.py) computes what our model computes.

Default: loads each reference fixture of nn/tests/fixtures/ (dit-dense, ditmoe-token-choice:
random weights under the official names, produced with the official PyTorch code; see the
README there) into the torch model with `load_state_dict(strict=True)` and checks, as
‖a − b‖/‖b‖:

- the eval-mode output, the train-mode output (no label dropout), the loss
  mean((out − target)²) and the balance loss (MoE): to 1e-5;
- every gradient of loss + aux_loss: to 1e-4, and that exactly the trainable parameters
  have one.

Our Rust model passes the same fixtures (nn/tests/parity.rs), so the two sides do the same
work.

With `--checkpoint FILE --ditmoe BINARY`: also checks a checkpoint of ours at benchmark size
(written by `ditmoe train`): it must load strictly into the torch model built from the config
in its metadata (so same shapes, names and parameter count), and the eval output and router
probabilities of `ditmoe forward` on random inputs must match torch's to 1e-4.

Prints a table; exits 1 on any failure.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ditmoe_torch import DiT, config_from_reference, model_config, parameter_count

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "nn" / "tests" / "fixtures"
OUTPUT_TOL, GRAD_TOL, CHECKPOINT_TOL = 1e-5, 1e-4, 1e-4


def relative_error(a, b):
    """‖a − b‖ / ‖b‖ (the absolute ‖a − b‖ where b is all zero)."""
    a, b = a.double(), b.double()
    diff, ref = (a - b).norm().item(), b.norm().item()
    return diff / ref if ref > 0 else diff


class Table:
    def __init__(self):
        self.rows, self.failed = [], False

    def add(self, case, quantity, error, tol):
        ok = error <= tol
        self.failed |= not ok
        self.rows.append((case, quantity, f"{error:.2e}", f"{tol:.0e}", "ok" if ok else "FAIL"))

    def fail(self, case, quantity, why):
        self.failed = True
        self.rows.append((case, quantity, why, "", "FAIL"))

    def print(self):
        header = ("case", "quantity", "rel. error", "tol", "")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        for i, row in enumerate([header, *self.rows]):
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))


def check_fixture(name, table, all_gradients):
    """One fixture directory: eval, train, loss, aux_loss and gradients."""
    folder = FIXTURES / name
    cfg = config_from_reference(json.loads((folder / "config.json").read_text()))
    model = DiT(cfg)
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    inputs = load_file(folder / "inputs.safetensors")
    expected_eval = load_file(folder / "eval.safetensors")
    expected = load_file(folder / "train.safetensors")
    x, t, y, target = inputs["x"], inputs["t"], inputs["y"], inputs["target"]

    model.eval()
    with torch.no_grad():
        out, _ = model(x, t, y)
    table.add(name, "eval out", relative_error(out, expected_eval["out"]), OUTPUT_TOL)

    model.train()
    out, aux = model(x, t, y, drop_labels=False)
    loss = (out - target).pow(2).mean()
    total = loss if aux is None else loss + aux
    total.backward()
    table.add(name, "train out", relative_error(out, expected["out"]), OUTPUT_TOL)
    table.add(name, "loss", relative_error(loss.detach(), expected["loss"].squeeze()), OUTPUT_TOL)
    if "aux_loss" in expected:
        if aux is None:
            table.fail(name, "aux_loss", "the model gave none")
        else:
            table.add(name, "aux_loss",
                      relative_error(aux.detach(), expected["aux_loss"].squeeze()), OUTPUT_TOL)

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fixture_grads = {k[len("grad."):]: v for k, v in expected.items() if k.startswith("grad.")}
    if set(params) != set(fixture_grads):
        only_torch = sorted(set(params) - set(fixture_grads))
        only_fixture = sorted(set(fixture_grads) - set(params))
        table.fail(name, "gradient names", f"torch only {only_torch}, fixture only {only_fixture}")
        return
    errors = {n: relative_error(params[n].grad, fixture_grads[n]) for n in sorted(params)}
    if all_gradients:
        for n, e in errors.items():
            table.add(name, f"grad {n}", e, GRAD_TOL)
    worst = max(errors, key=errors.get)
    table.add(name, f"gradients ({len(errors)} tensors), worst: {worst}", errors[worst], GRAD_TOL)


def check_checkpoint(path, binary, table):
    """A checkpoint of ours: strict load, then eval output and router probabilities against
    `ditmoe forward` on random inputs."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    with safe_open(path, "pt") as f:
        cfg = model_config(json.loads(f.metadata()["config"]))
    model = DiT(cfg)
    model.load_state_dict(load_file(path), strict=True)
    model.eval()
    case = f"checkpoint ({parameter_count(model):,} params)"

    gen = torch.Generator().manual_seed(0)
    n, c, s = 2, cfg["in_channels"], cfg["input_size"]
    inputs = {
        "x": torch.randn(n, c, s, s, generator=gen),
        "t": torch.rand(n, generator=gen) * 1000,
        "y": torch.tensor([1, cfg["num_classes"]], dtype=torch.int64),  # a class and the null one
    }
    router_probs = {}
    if cfg["moe"] is not None:
        for i, block in enumerate(model.blocks):
            block.moe.gate.register_forward_hook(
                lambda _m, _in, logits, i=i: router_probs.__setitem__(i, logits.softmax(-1)))
    with torch.no_grad():
        out, _ = model(**inputs)

    with tempfile.TemporaryDirectory() as tmp:
        save_file(inputs, f"{tmp}/inputs.safetensors")
        run = subprocess.run(
            [binary, "forward", "--checkpoint", str(path), "--inputs", f"{tmp}/inputs.safetensors",
             "--out", f"{tmp}/out.safetensors"], capture_output=True, text=True)
        if run.returncode != 0:
            table.fail(case, "ditmoe forward", f"exit {run.returncode}: {run.stderr.strip()[-300:]}")
            return
        ours = load_file(f"{tmp}/out.safetensors")
    table.add(case, "eval out vs ditmoe forward", relative_error(out, ours["out"]), CHECKPOINT_TOL)
    if router_probs:
        errors = [relative_error(router_probs[i], ours[f"router_probs.blocks.{i}"].reshape(
            router_probs[i].shape)) for i in sorted(router_probs)]
        table.add(case, f"router probs ({len(errors)} layers), worst", max(errors), CHECKPOINT_TOL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all-gradients", action="store_true", help="one row per gradient")
    parser.add_argument("--checkpoint", help="also check this checkpoint of ours (file or dir)")
    parser.add_argument("--ditmoe", help="our binary, for --checkpoint")
    parser.add_argument("--no-fixtures", action="store_true", help="only the checkpoint check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = Table()
    if not args.no_fixtures:
        for name in ("dit-dense", "ditmoe-token-choice"):
            check_fixture(name, table, args.all_gradients)
    if args.checkpoint:
        if not args.ditmoe:
            parser.error("--checkpoint needs --ditmoe BINARY")
        check_checkpoint(args.checkpoint, args.ditmoe, table)
    print(f"PyTorch {torch.__version__}, f32, {args.threads} threads")
    table.print()
    if table.failed:
        print("parity: FAILED")
        sys.exit(1)
    print("parity: ok")


if __name__ == "__main__":
    main()
