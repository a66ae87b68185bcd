"""Can E4's mask heads tell the queried digit from the others when they are told the answer?

A diagnostic for the screening (docs/e4.md): the E4 editor's encoder and one transformer
module's mask head (``ctx``, ``arnn`` or ``brnn``, built as in training, with its condition of
target colour and query), trained **supervised** — binary cross-entropy against the queried
digit's stroke pixels pooled to the mask's 16×16 grid — on MREF's training edits, without the GAN
(the stage that ``attentionrnn e4 train --locate-steps`` runs before the GAN).
Every ``--every`` steps it measures on the validation edits what the screening measures: the mask's
share on the queried digit's strokes and on the other digits' strokes, and the queried digit's
share of the two per edit, q / (q + o), averaged over edits as the screening does, beside a
query-blind mask's; and the same ratio with each query replaced by another digit of the image
(a head that reads the query moves its mask there, so the true digit's ratio falls).

If a supervised head reaches a ratio far above the query-blind level, the architecture can
represent the selection, and the unsupervised runs' blind masks come from their training signal,
not from the head. The ground truth used here enters an E4 training run only through
``--locate-steps``.

    python scripts/e4_mask_probe.py --mnist ../shared/data/mnist --masks ctx arnn \\
        --out docs/results/e4-probe
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from attentionrnn.engine.precision import cpu_name  # noqa: E402
from attentionrnn.engine.provenance import git_commit  # noqa: E402
from attentionrnn.experiments.e4.config import E4Config  # noqa: E402
from attentionrnn.experiments.e4.data import partner_samples  # noqa: E402
from attentionrnn.experiments.e4.locate import locate_parameters, train_locate  # noqa: E402
from attentionrnn.experiments.e4.metrics import mask_correctness  # noqa: E402
from attentionrnn.experiments.e4.model import E4_MASKS, Editor  # noqa: E402
from attentionrnn.experiments.e4.train import fixed_targets, load_data, split_indices  # noqa: E402


def shares(mask: torch.Tensor, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the mask's share on the queried digit's strokes and on the others'."""
    return mask_correctness(mask, b.region), mask_correctness(mask, b.others)


@torch.no_grad()
def measure(encoder, head, editor, task, idx, targets, partner, batch_size=100) -> dict:
    """Validation shares with the true query and with the query of another digit."""
    rows = {k: [] for k in ("queried", "others", "ratio", "blind", "swapped_ratio")}
    for start in range(0, len(idx), batch_size):
        sl = slice(start, start + batch_size)
        b = task.batch(idx[sl], targets[sl])
        f = encoder(b.x)
        _, a = head(f, query=editor.condition(0, b.targets, b.query), return_mask=True)
        q, o = shares(a.float(), b)
        rows["queried"].append(q)
        rows["others"].append(o)
        rows["ratio"].append(q / (q + o))  # per edit, as the screening (evaluate._query_shares)
        region, others = b.region.float().flatten(1).mean(1), b.others.float().flatten(1).mean(1)
        rows["blind"].append(region / (region + others))
        has = torch.from_numpy(partner[sl] >= 0)
        other_query = b.query.clone()
        other_query[has] = task.batch(partner[sl][has.numpy()], targets[sl][has.numpy()]).query
        _, a2 = head(f, query=editor.condition(0, b.targets, other_query), return_mask=True)
        q2, o2 = shares(a2.float(), b)
        rows["swapped_ratio"].append((q2 / (q2 + o2))[has])

    def mean(key):
        v = torch.cat(rows[key]).double()
        return float(v[~v.isnan()].mean())

    return {key: mean(key) for key in ("queried", "others", "ratio", "swapped_ratio")} | {
        "blind_ratio": mean("blind")}


def probe(mask: str, task, config: E4Config, steps: int, every: int, seed: int,
          fusion: str, encoder_from: Path | None = None) -> dict:
    torch.manual_seed(seed)
    idx = split_indices(task, config)
    val_targets = fixed_targets(task, idx["val"], "val")
    partner = partner_samples(task.data.image_index)[idx["val"]]
    editor = Editor(task.classes, task.query_channels, mask, config.channels, config.mask_hidden,
                    config.block_size, fusion)  # fmt: skip
    encoder, head = editor.encoder, editor.transformers[0].mask
    if encoder_from is not None:  # a trained run's encoder, frozen: only the head learns
        state = torch.load(encoder_from, map_location="cpu", weights_only=False)["model"]
        prefix = "editor.encoder."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix)})  # fmt: skip
        encoder.requires_grad_(False).eval()
    curve, start = [], time.perf_counter()

    def point(step: int, loss: float) -> None:
        head.eval()
        row = measure(encoder.eval(), head, editor, task, idx["val"], val_targets, partner)
        head.train()
        if encoder_from is None:
            encoder.train()
        row.update(step=step, loss=loss, seconds=time.perf_counter() - start)
        curve.append(row)
        print(f"{mask} step {step}: ratio {row['ratio']:.3f} (blind {row['blind_ratio']:.3f}, "
              f"query swapped {row['swapped_ratio']:.3f}) queried {row['queried']:.3f} "
              f"others {row['others']:.3f}", flush=True)  # fmt: skip

    # the stage of E4's --locate-steps (its default --locate-lr), measured as it goes
    train_locate(editor, task, idx["train"], steps=steps, lr=config.locate_lr,
                 batch_size=config.batch_size,
                 seed=seed, params=locate_parameters(editor, encoder=encoder_from is None),
                 every=every, on_every=point)  # fmt: skip
    return {"mask": mask, "query_fusion": fusion, "seed": seed, "steps": steps,
            "encoder": str(encoder_from) if encoder_from else "trained with the head",
            "curve": curve}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", required=True, help="MNIST folder")
    p.add_argument("--masks", nargs="+", default=["ctx", "arnn"], choices=E4_MASKS)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--query-fusion", default="add", choices=("add", "mul"))
    p.add_argument("--encoder", type=Path, default=None, metavar="BEST_PT",
                   help="a finished E4 run's best.pt: its encoder, frozen (default: trained)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    config = E4Config(mnist=a.mnist, precision="fp32")
    task = load_data(config)
    result = {
        "what": "supervised mask heads (BCE on the queried digit's strokes), validation shares",
        "git_commit": git_commit(), "cpu": cpu_name(), "precision": "fp32", "threads": a.threads,
        "data": task.identity, "batch_size": config.batch_size,
        "runs": [probe(m, task, config, a.steps, a.every, a.seed, a.query_fusion, a.encoder)
                 for m in a.masks],
    }  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "probe.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# E4 mask heads trained supervised (diagnostic)", "",
             f"`python scripts/e4_mask_probe.py --masks {' '.join(a.masks)} --steps {a.steps} "
             f"--every {a.every} --seed {a.seed} --query-fusion {a.query_fusion}"
             f"{f' --encoder {a.encoder}' if a.encoder else ''}`; "
             f"commit {result['git_commit'][:7]}, "
             f"{result['cpu']}, fp32, {a.threads} thread(s). Validation edits of MREF.", "",
             "| mask | step | queried % | others % | ratio % | blind % | ratio, query swapped % |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for run in result["runs"]:
        for c in run["curve"]:
            lines.append(f"| {run['mask']} | {c['step']} | {100 * c['queried']:.1f} | "
                         f"{100 * c['others']:.1f} | {100 * c['ratio']:.1f} | "
                         f"{100 * c['blind_ratio']:.1f} | {100 * c['swapped_ratio']:.1f} |")
    (a.out / "probe.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out / 'probe.md'}")


if __name__ == "__main__":
    main()
