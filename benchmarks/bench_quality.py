"""What lower precision costs on real text: the demo model's held-out quality per dtype.

    python benchmarks/bench_quality.py                       # Macbeth excerpt (tests/data)
    python benchmarks/bench_quality.py --plays DIR           # + the four held-out plays

For each dtype: bits per UTF-8 byte of held-out text through the sequence path (prefill), and,
over the first `--kl-tokens` tokens run one at a time (the decode path: the C step where it is
built), the mean KL divergence KL(fp32 || dtype) of the next-token distributions and how often
the top-1 token agrees with fp32's: the figures llama.cpp's perplexity tool prints with
`--kl-divergence`. DIR holds the Gutenberg `*_gut.txt` plays (README, "The demo model"); the
held-out plays are those the demo model never saw in training (Twelfth Night, Macbeth, Henry V,
The Tempest). Budgets from issue 14: int8 within 0.5% of fp32 bits/byte, int4 within 3%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "chatrwkv" / "data" / "models" / "rwkv7-shakespeare-tiny.pth"
MACBETH = ROOT / "tests" / "data" / "macbeth_heldout.txt"
BUDGET = {"bf16": 0.5, "int8": 0.5, "int4": 3.0}  # % of fp32 bits/byte


def decode_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Log-probabilities [T, V] after each token, one token at a time (the decode path)."""
    state = model.zero_state()
    with torch.inference_mode():
        return torch.stack([torch.log_softmax(model.forward([t], state).float(), -1)
                            for t in ids])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--plays", type=Path, help="folder of *_gut.txt plays (shakespeare 0.6)")
    ap.add_argument("--dtypes", default="fp32,bf16,int8,int4")
    ap.add_argument("--kl-tokens", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from chatrwkv.models import load_model
    from chatrwkv.tokenizer import load_tokenizer
    from chatrwkv.training.cli import bits_per_byte  # the trainer's held-out measure
    from chatrwkv.training.shakespeare import load_corpus, split_corpus

    torch.set_num_threads(args.threads)
    texts = {"Macbeth excerpt": MACBETH.read_text(encoding="utf-8")}
    if args.plays:
        texts["4 held-out plays"] = split_corpus(load_corpus(args.plays))[1]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    if dtypes[0] != "fp32":
        dtypes.insert(0, "fp32")
    probe = load_model(args.model, "cpu", "fp32")
    tok = load_tokenizer(probe.config.vocab_size)
    del probe
    corpora = {name: (tok.encode(t), len(t.encode("utf-8"))) for name, t in texts.items()}
    kl_ids = corpora[list(corpora)[-1]][0][:args.kl_tokens]
    rows, ref_bpb, ref_lp = [], {}, None
    for dtype in dtypes:
        t0 = time.perf_counter()
        model = load_model(args.model, "cpu", dtype)
        bpb = {name: bits_per_byte(model, ids, n) for name, (ids, n) in corpora.items()}
        lp = decode_logprobs(model, kl_ids)
        if dtype == "fp32":
            ref_bpb, ref_lp = bpb, lp
        kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1).mean().item()
        top1 = (ref_lp.argmax(-1) == lp.argmax(-1)).float().mean().item()
        rows.append((dtype, bpb, kl, top1))
        print(f"{dtype}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    names = list(corpora)
    print(f"model {args.model.name}; bits/byte through the sequence path; KL and top-1 over "
          f"{len(kl_ids)} tokens decoded one at a time, against fp32")
    print("| dtype | " + " | ".join(f"{n} bits/byte" for n in names)
          + " | mean KL (nats) | top-1 agree | budget |")
    print("|---" * (len(names) + 4) + "|")
    failed = False
    for dtype, bpb, kl, top1 in rows:
        worst = max(100 * (bpb[n] / ref_bpb[n] - 1) for n in names)
        ok = worst <= BUDGET.get(dtype, 0.0) + 1e-9
        failed |= not ok
        cells = " | ".join(f"{bpb[n]:.4f} ({100 * (bpb[n] / ref_bpb[n] - 1):+.2f}%)"
                           for n in names)
        budget = "-" if dtype == "fp32" else f"{'ok' if ok else 'OVER'} (<= {BUDGET[dtype]}%)"
        print(f"| {dtype} | {cells} | {kl:.5f} | {100 * top1:.2f}% | {budget} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
