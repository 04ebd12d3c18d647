"""The explain page's HTML: one self-contained file (inline CSS, inline SVG, PNG heatmaps as
data: URIs, a few lines of JavaScript to enlarge an attention head) rendered from the numbers
of numpy_gpt2.explain.walk. The numbers are embedded once, as JSON in
<script type="application/json" id="data">, and every number shown is formatted from that
same JSON value (fmt, token_label): each table names its source (data-src="detail.probs",
data-rows, data-cols), so tests/explain/test_explain.py can check the visible text against it.
"""

from __future__ import annotations

import json

import numpy as np

from numpy_gpt2.bpe import GPT2_PATTERN
from numpy_gpt2.explain.png import data_uri
from numpy_gpt2.explain.values import GENERATOR, SHOWN_ROWS, WHOLE, fmt, to_json, token_label
from numpy_gpt2.explain.widgets import CSS, SCRIPT, bars, esc, heatmap, lines_chart, scale_note, table

# ---- the page --------------------------------------------------------------------------------

def render(d: dict, meta: dict) -> str:
    """The HTML page of walk()'s dict d. meta: model, dtype, version (strings shown on top)."""
    j = to_json(d)
    j["meta"] = to_json(meta)
    texts = j["tokens"]["texts"]
    T = len(texts)
    labels = [f"{t}:{token_label(s)}" for t, s in enumerate(texts)]
    cfg, det = meta["config"], j["detail"]
    L, H, E = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    li, hi = det["layer"], det["head"]
    s = []
    add = s.append
    add(f"<h1>GPT-2, step by step: “{esc(meta['prompt'])}”</h1>")
    add(f'<p class="meta">model <b>{esc(meta["model"])}</b> · dtype {esc(meta["dtype"])} · '
        f'numpy_gpt2 {esc(meta["version"])} · n_layer {L}, n_head {H}, n_embd {E}, vocab_size '
        f'{cfg["vocab_size"]}, n_ctx {cfg["n_ctx"]} · {T} tokens. Every number below was computed '
        f'by numpy_gpt2 for this prompt; they are also in this file as JSON '
        f'(<code>script#data</code>).</p>')
    nav = [("tokens", "1 Tokens"), ("embeddings", "2 Embeddings"), ("layers", "3 Every layer"),
           ("detail", f"4 Layer {li}, head {hi}"), ("output", "5 Output")]
    if "target" in j:
        nav.append(("target", "6 Target and gradients"))
    add("<nav>" + "".join(f'<a href="#{k}">{v}</a>' for k, v in nav) + "</nav>")

    # 1. tokens
    add('<h2 id="tokens">1. Tokenization: text → pieces → bytes → merges → ids</h2>')
    add('<div class="eq">pieces = GPT-2\'s regex split of the text; each piece\'s UTF-8 bytes '
        'become symbols (byte b → one printable character, b" " → Ġ); then, repeatedly, the adjacent pair '
        'of lowest rank in merges.txt is merged; each final symbol is one id of vocab.json</div>')
    add(f'<p class="note">regex: <code>{esc(GPT2_PATTERN.pattern)}</code> (numpy_gpt2.bpe, '
        f'docs/tokenizer.md)</p>')
    for p in j["tokens"]["pieces"]:
        steps = "".join(f'<div class="step">rank {st["rank"]}: {esc(st["pair"][0])} + {esc(st["pair"][1])}'
                        f' → {esc(" ".join(st["symbols"]))}</div>' for st in p["steps"])
        add(f'<span class="piece"><b>{esc(token_label(p["text"]))}</b><div>{esc(" ".join(p["symbols"]))}</div>'
            f'{steps}<div>ids {esc(", ".join(map(str, p["ids"])))}</div></span>')
    add(table(j, "tokens.ids", ["id"], labels, caption=f"{T} token ids (U), shape ({T},)"))

    # 2. embeddings
    em = j["embeddings"]
    add('<h2 id="embeddings">2. Embeddings</h2>')
    add('<div class="eq">h₀ = U W_e + W_p      (token rows of wte plus position rows of wpe)</div>')
    add(f'<p class="shape">wte ({cfg["vocab_size"]}, {E}) → rows ({T}, {E}); wpe ({cfg["n_ctx"]}, {E}) → '
        f'rows 0..{T - 1} ({T}, {E}); h₀ ({T}, {E})</p>')
    for name, what in (("wte", "token embedding rows wte[U]"), ("wpe", "position embedding rows wpe[0..T-1]"),
                       ("sum", "h₀ = their sum, the residual stream's start")):
        add(f"<h3>{what}</h3>")
        add(heatmap(d["embeddings"][name]["img"], "signed", labels, title=what) + scale_note(d["embeddings"][name]["img"]))
    add(table(j, "embeddings.wte.norm|embeddings.wpe.norm|embeddings.sum.norm", ["‖wte‖", "‖wpe‖", "‖h₀‖"],
              labels, caption="norms per position"))
    add(table(j, "embeddings.sum.rows", labels, [f"d{k}" for k in range(8)],
              caption="h₀, the first 8 of its dimensions per position", shade="signed"))

    # 3. every layer
    add('<h2 id="layers">3. Every layer</h2>')
    add('<div class="eq">x ← x + Attn(LN₁(x));  x ← x + FFN(LN₂(x))      (each block i = 0 .. L−1)</div>')
    add("<h3>The residual stream's norm after each sub-block</h3>")
    series = np.array([[b["resid_norm"][k][t] for b in j["layers"] for k in ("in", "mid")] +
                       [j["layers"][-1]["resid_norm"]["out"][t]] for t in range(T)])
    xl = [f"{k} h.{i}" for i in range(L) for k in ("in", "+attn")] + [f"out h.{L - 1}"]
    add(lines_chart(series, xl, title="‖x‖ per position (light) and their mean (bold)"))
    add('<p class="note">‖x‖ per position (light lines) and the mean over positions (bold), at the input '
        'of each block, after its attention, and at the end.</p>')
    add(table(j, "layers.*.resid_norm.out", [f"h.{i}" for i in range(L)], labels, caption="‖h.i‖: the residual "
              "stream's norm after each block, per position"))
    add("<h3>LayerNorm before attention: per-position scale 1/√(σ²+ε)</h3>")
    add('<div class="eq">LN(x) = (x − μ) / √(σ² + ε) · γ + β     (μ, σ² over the E dimensions of each position)</div>')
    add(table(j, "layers.*.ln_1.scale", [f"ln_1 h.{i}" for i in range(L)], labels,
              caption="1/√(σ²+ε) of each block's input, per position"))
    add("<h3>Attention patterns of every head (rows: layers, columns: heads)</h3>")
    add('<p class="note">Each square is softmax(QKᵀ/√D + mask) of one head, query down, key across '
        '(white 0 → blue 1). Click a square to see it with the tokens on both axes below.</p>')
    grid = [f'<div class="grid" style="grid-template-columns:60px repeat({H},minmax(0,72px))">', "<div></div>"]
    grid += [f'<div class="lab" style="text-align:center">head {h}</div>' for h in range(H)]
    for i in range(L):
        grid.append(f'<div class="lab">layer {i}</div>')
        for h in range(H):
            ent = j["layers"][i]["attn_entropy"][h]
            grid.append(f'<img id="att-{i}-{h}" alt="layer {i} head {h}" title="layer {i}, head {h}: '
                        f'mean entropy {fmt(ent)} nats" onclick="showHead({i},{h})" '
                        f'src="{data_uri(d["layers"][i]["img_attn"][h], "prob")}">')
    grid.append("</div>")
    add("".join(grid))
    add(f'<h3 id="att-big-title">layer {li}, head {hi} (click any square above)</h3>')
    add(heatmap(d["layers"][li]["img_attn"][hi], "prob", labels, labels, width=560, image_id="att-big"))
    add(table(j, "layers.*.attn_entropy", [f"layer {i}" for i in range(L)], [f"head {h}" for h in range(H)],
              caption="mean entropy of each head's attention (nats; 0 = always one token)"))

    # 4. one layer and head in detail
    D = det["D"]
    add(f'<h2 id="detail">4. Layer {li}, head {hi}, step by step</h2>')
    add(f'<p class="note">Any other layer and head: render the page again with that layer and head. D = E / H = {D}.</p>')
    add("<h3>LayerNorm LN₁ of the block's input x</h3>")
    add('<div class="eq">μ = mean(x),  σ² = mean((x − μ)²),  LN₁(x) = (x − μ) / √(σ² + ε) · γ + β</div>')
    add(table(j, "detail.ln_1.mean|detail.ln_1.var|detail.ln_1.scale", ["μ", "σ²", "1/√(σ²+ε)"], labels,
              caption=f"per position (x: ({T}, {E}))"))
    add(table(j, "detail.x_rows", labels, [f"d{k}" for k in range(8)], shade="signed",
              caption="x, first 8 dimensions") + table(j, "detail.ln_1_rows", labels, [f"d{k}" for k in range(8)],
                                                        shade="signed", caption="LN₁(x), first 8 dimensions"))
    add(heatmap(d["detail"]["img_ln_1"], "signed", labels, title="LN1(x)") + scale_note(d["detail"]["img_ln_1"]))
    add("<h3>Queries, keys and values of this head</h3>")
    add(f'<div class="eq">[Q | K | V] = LN₁(x) W_qkv + b;  head {hi} takes columns {hi * D}..{(hi + 1) * D - 1} '
        f'of each third</div><p class="shape">W_qkv ({E}, {3 * E}); q, k, v ({T}, {D})</p>')
    add('<div class="pair">' + "".join(
        f"<div><b>{n}</b>{heatmap(d['detail'][n], 'signed', labels, width=240, title=n)}{scale_note(d['detail'][n])}</div>"
        for n in ("q", "k", "v")) + "</div>")
    for n in ("q", "k", "v"):
        add(table(j, f"detail.{n}", labels, [f"d{k}" for k in range(D)], cols=8, shade="signed",
                  caption=f"{n}, first 8 of {D} dimensions"))
    add("<h3>The five stages: scores, scaled, masked, softmax, z</h3>")
    add(f'<div class="eq">scores = q kᵀ  →  scaled = scores · {fmt(det["scale"])} (1/√D)  →  masked: −∞ where key '
        f'&gt; query  →  A = softmax(masked) (each row sums to 1)  →  z = A v</div>'
        f'<p class="shape">scores, scaled, masked, A: ({T}, {T}) query × key; z ({T}, {D})</p>')
    rows = None if T <= WHOLE else -min(SHOWN_ROWS, T)
    for n, kind, what in (("scores", "signed", "q kᵀ"), ("scaled", "signed", "q kᵀ / √D"),
                          ("masked", "signed", "with the causal mask"), ("probs", "prob", "softmax")):
        add(f"<h3>{n}: {what}</h3>")
        add(heatmap(d["detail"][n], kind, labels, labels, width=420, title=n) + scale_note(d["detail"][n], kind))
        add(table(j, f"detail.{n}", labels, labels, rows=rows, shade="prob" if kind == "prob" else "signed",
                  caption="every row" if rows is None else f"the last {-rows} query rows (all {T} are in the JSON)"))
    add("<h3>z = A v, and what the head adds to the residual stream</h3>")
    add(f'<div class="eq">head output zₕ W_O[rows {hi * D}..{(hi + 1) * D - 1}] is this head\'s share of '
        f'Attn(x) = Concat(z₀..z_H−1) W_O + b_O</div>')
    add(heatmap(d["detail"]["z"], "signed", labels, width=240, title="z") + scale_note(d["detail"]["z"]))
    add(table(j, "detail.z", labels, [f"d{k}" for k in range(D)], cols=8, shade="signed", caption="z, first 8 dimensions"))
    add(table(j, "detail.contribution_norm", [f"‖z W_O‖ head {hi}"], labels,
              caption="the norm of this head's contribution, per position"))
    add(table(j, f"layers.{li}.attn_norm", ["‖Attn(x)‖"], labels, caption="the norm of the whole attention output (all heads + bias)"))
    add("<h3>The MLP: pre- and post-GELU activations</h3>")
    add(f'<div class="eq">FFN(x) = GELU(LN₂(x) W₁ + b₁) W₂ + b₂;  GELU(u) = ½u(1 + tanh(√(2/π)(u + 0.044715u³)))</div>'
        f'<p class="shape">W₁ ({E}, {4 * E}): the pre-activations u ({T}, {4 * E}); W₂ ({4 * E}, {E})</p>')
    add("<b>pre-GELU u</b>" + heatmap(d["detail"]["mlp"]["img_pre"], "signed", labels, title="pre-GELU")
        + scale_note(d["detail"]["mlp"]["img_pre"]))
    add("<b>post-GELU</b>" + heatmap(d["detail"]["mlp"]["img_post"], "signed", labels, title="post-GELU")
        + scale_note(d["detail"]["mlp"]["img_post"]))
    top = [f"#{k + 1}" for k in range(len(det["mlp"]["neurons"][0]))]
    add('<div class="pair">' + table(j, "detail.mlp.neurons", labels, top, caption="most active neurons (index)")
        + table(j, "detail.mlp.pre", labels, top, shade="signed", caption="their pre-GELU value")
        + table(j, "detail.mlp.post", labels, top, shade="signed", caption="their post-GELU value") + "</div>")
    add(table(j, "detail.mlp.active", ["GELU > 0"], labels, caption=f"fraction of the {4 * E} neurons active, per position"))
    add(table(j, f"layers.{li}.mlp_norm", ["‖FFN‖"], labels, caption="the norm of the MLP's output, per position"))

    # 5. output
    out = j["output"]
    add('<h2 id="output">5. The output</h2>')
    add('<div class="eq">logits = LN_f(h_L) W_eᵀ;  P(next token) = softmax(logits)</div>'
        f'<p class="shape">LN_f(h_L) ({T}, {E}) · W_eᵀ ({E}, {cfg["vocab_size"]}) → logits ({T}, {cfg["vocab_size"]})</p>')
    add("<h3>The logit lens: each layer's residual stream read by the output head</h3>")
    add('<div class="eq">top token of softmax(LN_f(x) W_eᵀ), for x = h₀ and each block\'s output h.i; the colour is its probability</div>')
    add(table(j, "lens.texts", j["lens"]["rows"], labels, shade="prob", titles="lens.prob",
              caption="hover a cell for its probability; the last row is the model's own prediction"))
    add(f"<h3>The next token after “…{esc(token_label(texts[-1]))}”, and what sampling does to it</h3>")
    add('<div class="eq">logits / temperature  →  top-k: keep the k largest  →  top-p: keep the smallest set '
        'with probability ≥ p  →  softmax  (numpy_gpt2.generation.sampling.filter_logits, as generate)</div>')
    add(table(j, "output.ids|output.logits", ["id", "logit"], [token_label(t) for t in out["texts"]], caption="the most likely tokens"))
    add(table(j, "output.stages.*.probs", [st["stage"] for st in out["stages"]], [token_label(t) for t in out["texts"]], shade="prob",
              caption="their probability after each stage"))
    add(table(j, "output.stages.*.kept", ["tokens left"], [st["stage"] for st in out["stages"]],
              caption=f"how many of the {cfg['vocab_size']} tokens can still be drawn after each stage"))

    # 6. target
    if "target" in j:
        tg = j["target"]
        add('<h2 id="target">6. The target, the loss and the gradients</h2>')
        add(f'<p>Target after the prompt: “{esc(tg["text"])}” = ids {esc(", ".join(map(str, tg["ids"])))} '
            f'({esc(", ".join(token_label(t) for t in tg["texts"]))}).</p>')
        add('<div class="eq">L = −mean over the target positions of log softmax(logits)[target]</div>')
        add(table(j, "target.loss", ["loss (nats)"], ["L"]))
        names = [n[len("grad."):] for n in tg["grad_names"]]
        group = [n.split(".")[1] if n.startswith("h.") else n for n in names]
        group = [f"h.{g}" if g.isdigit() else g for g in group]
        add("<h3>‖dL/d(activation)‖ at every named point, in backward order</h3>")
        add(bars(tg["grad_norms"], names, groups=group, title="gradient norms (log scale)"))
        add(table(j, "target.grad_norms", ["‖grad‖"], names, caption="the same numbers (backward order)"))
        add("<h3>Saliency: which prompt tokens matter</h3>")
        add(f'<div class="eq">‖dL/dh₀[t]‖;   ‖d logit[{T - 1}, {tg["ids"][0]}]/dh₀[t]‖ (the first target '
            f'token\'s logit);   (d logit/dh₀[t]) · h₀[t] (gradient × input)</div>')
        add(table(j, "target.saliency_loss|target.saliency_logit|target.grad_x_input",
                  ["‖dL/dh₀‖", "‖dlogit/dh₀‖", "grad × input"], labels, shade="signed"))

    data_json = json.dumps(j, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"generator\" content=\"{GENERATOR}\">"
            f"<title>GPT-2 explained: {esc(meta['prompt'][:60])}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(s) +
            f"\n<script type=\"application/json\" id=\"data\">{data_json}</script>\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")
