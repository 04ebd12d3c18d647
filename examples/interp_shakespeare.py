"""Looking inside a small GPT-2 trained on Tiny Shakespeare with numpy_gpt2.interp.

Train the model first (a few minutes on 2 cores; docs/interp.md gives the measured run):

    python -m numpy_gpt2 train --data tinyshakespeare.txt --out out-interp --n-layer 2 --n-head 4 \\
        --n-embd 128 --block-size 128 --batch-size 8 --max-iters 500 --eval-interval 250 --eval-iters 5
    python examples/interp_shakespeare.py --model out-interp --plot docs/interp_induction.png

It prints, as Markdown tables: each head's induction score on repeated random tokens (and its
previous-token score on a Shakespeare line), the logit lens of that line, the direct logit
attribution of each part of the residual stream, and the loss on the second copy of repeated
text with each head ablated (its z set to 0) in turn. --plot draws the induction scores and
the top induction head's attention on one repeated sequence.
"""
import argparse

import numpy as np

try:
    from numpy_gpt2 import forward, load, load_tokenizer
except ImportError:  # run from a checkout without `pip install -e .`
    import os, sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir))
    from numpy_gpt2 import forward, load, load_tokenizer
from numpy_gpt2.debug.capture import activations
from numpy_gpt2.interp.heads import detect_heads, induction_scores, repeated_random_tokens
from numpy_gpt2.interp.resid import decompose_resid, logit_attrs, logit_lens
from numpy_gpt2.interp.weights import process_weights, unembedding_bias
from numpy_gpt2.loss import token_nll

LINE = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
REPEATED = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
            "First Citizen:\nYou are all resolved rather to die than to famish?\n")


def second_copy_loss(params, config, tokens, half, hooks=None):
    """Mean next-token loss (nats) over the predictions of the second copy's tokens (the first
    token of the second copy excluded: it is not predictable from the first copy)."""
    losses = []
    for row in np.atleast_2d(tokens):
        logits = forward(params, config, row, hooks=hooks)
        nll = token_nll(logits[:-1], row[1:])  # nll[t]: predicting token t + 1
        losses.append(nll[-(half - 1):].mean())
    return float(np.mean(losses))


def ablate(layer, head):
    """hooks= that zero one head's z (its output, before c_proj's bias)."""
    def zero(name, z):
        z = np.array(z)
        z[..., head, :, :] = 0
        return z
    return {f"h.{layer}.attn.z": zero}


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" ---: " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (from numpy_gpt2 train)")
    parser.add_argument("--plot", help="write the induction picture (PNG) here")
    parser.add_argument("--seq-len", type=int, default=50, help="random tokens per copy")
    parser.add_argument("--batch", type=int, default=10, help="repeated random sequences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    params, config = load(args.model, np.float64)
    enc = load_tokenizer(args.model)
    L, H = config.n_layer, config.n_head

    # 1. Induction scores on repeated random tokens; previous-token scores on a real line.
    scores = induction_scores(params, config, seq_len=args.seq_len, batch=args.batch, seed=args.seed)
    line = np.array(enc.encode(LINE))
    cache = activations(params, config, line, names="*,*softmax")
    previous = detect_heads(cache, config, "previous_token")
    print(f"## Induction scores ({args.batch} x 2 x {args.seq_len} random tokens) "
          f"and previous-token scores ({len(line)}-token line)\n")
    table(["head", "induction", "previous token"],
          [[f"{i}.{h}", f"{scores[i, h]:.3f}", f"{previous[i, h]:.3f}"] for i in range(L) for h in range(H)])
    top = np.unravel_index(np.argmax(scores), scores.shape)
    uniform = np.mean(1 / np.arange(args.seq_len + 1, 2 * args.seq_len + 1))  # query q sees q + 1 keys
    uniform_previous = np.sum(1 / np.arange(2, len(line) + 1)) / len(line)
    print(f"top induction head: {top[0]}.{top[1]} (score {scores[top]:.3f}). A head attending "
          f"uniformly to every token so far would score {uniform:.3f} (induction) and "
          f"{uniform_previous:.3f} (previous token).\n")

    # 2. The logit lens of the line: each layer's top next-token guess, and the loss.
    lens = logit_lens(cache, params, config)  # (L + 1, T, V)
    labels = [f"{i}_pre" for i in range(L)] + ["final_post"]
    print("## Logit lens\n")
    rows = []
    for t in range(len(line) - 1):
        guesses = [repr(enc.decode([int(lens[k, t].argmax())])) for k in range(L + 1)]
        rows.append([repr(enc.decode([int(line[t])])), repr(enc.decode([int(line[t + 1])]))] + guesses)
    table(["token", "next"] + labels, rows)
    nll = [token_nll(lens[k, :-1], line[1:]).mean() for k in range(L + 1)]
    table(["point"] + labels, [["loss (nats)"] + [f"{x:.3f}" for x in nll]])

    # 3. Direct logit attribution of the correct next token (folded weights).
    folded = process_weights(params, config)
    fcache = activations(folded, config, line)
    parts, stack = decompose_resid(fcache, config)
    targets = np.append(line[1:], 0)  # position t's next token (the last position's is unused)
    attrs = logit_attrs(folded, config, stack, targets, cache=fcache)[:, :-1]
    logit = fcache["logits"][np.arange(len(line) - 1), line[1:]]  # forward adds b_U
    print("## Direct logit attribution of the next token (mean over the line's positions)\n")
    table(parts + ["b_U", "sum", "logit"],
          [[f"{a:.3f}" for a in attrs.mean(1)] + [f"{unembedding_bias(folded)[line[1:]].mean():.3f}",
                                                 f"{attrs.sum(0).mean() + unembedding_bias(folded)[line[1:]].mean():.3f}",
                                                 f"{logit.mean():.3f}"]])

    # 4. Ablations: loss on the second copy of repeated text, each head's z zeroed in turn.
    random_tokens = repeated_random_tokens(args.seq_len, args.batch, args.seed + 1, config.vocab_size)
    text = np.array(enc.encode(REPEATED))
    text2 = np.concatenate([text, text])
    rows = []
    base = (second_copy_loss(params, config, random_tokens, args.seq_len),
            second_copy_loss(params, config, text2, len(text)))
    first = float(np.mean(token_nll(forward(params, config, text)[:-1], text[1:])))
    rows.append(["none", f"{base[0]:.3f}", f"{base[1]:.3f}"])
    for i in range(L):
        for h in range(H):
            rows.append([f"{i}.{h}" + (" (top induction)" if (i, h) == top else ""),
                         f"{second_copy_loss(params, config, random_tokens, args.seq_len, ablate(i, h)):.3f}",
                         f"{second_copy_loss(params, config, text2, len(text), ablate(i, h)):.3f}"])
    print(f"## Loss on the second copy with one head ablated (random: {args.batch} x 2 x "
          f"{args.seq_len} tokens; text: a {len(text)}-token passage twice, whose first copy "
          f"costs {first:.3f} nats/token)\n")
    table(["ablated head", "repeated random tokens", "repeated text"], rows)

    if args.plot:
        plot(args.plot, params, config, scores, top, args)


def plot(path, params, config, scores, top, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = repeated_random_tokens(args.seq_len, 1, args.seed, config.vocab_size)[0]
    pattern = activations(params, config, tokens, names="*softmax")[f"h.{top[0]}.attn.softmax"][top[1]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    im = a.imshow(scores, cmap="viridis", vmin=0, vmax=max(0.5, scores.max()))
    a.set_xlabel("head")
    a.set_ylabel("layer")
    a.set_xticks(range(config.n_head))
    a.set_yticks(range(config.n_layer))
    for (i, h), s in np.ndenumerate(scores):
        a.text(h, i, f"{s:.3f}", ha="center", va="center", color="w" if s < 0.35 else "k")
    a.set_title("induction score per head")
    fig.colorbar(im, ax=a, fraction=0.046)
    b.imshow(pattern, cmap="magma", norm=matplotlib.colors.PowerNorm(0.5))  # faint stripes show
    b.set_title(f"head {top[0]}.{top[1]}: attention on {args.seq_len} random tokens, twice")
    b.set_xlabel("key position")
    b.set_ylabel("query position")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
