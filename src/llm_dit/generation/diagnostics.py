"""Diagnostics of Qwen3-VL rows against the Qwen3-4B rows the DiT expects (`llm-dit inspect`).

Per layer, from one VL forward pass with the image (plus one without it and one text-encoder pass, all layers at
once): token counts and mean/std per span; per-dimension std ratios against the text encoder's reference
statistics of the same layer; and the two measurements the research notes disagree about:

- image influence at the prompt's positions: `‖h_img − h_txt‖ / ‖h_txt‖` (Frobenius norms) over the prompt rows
  after the image block, `h_txt` the same rows from the VL model run without the image;
- per-dimension Pearson correlation, over those prompt rows, between the VL rows (with the image) and the
  Qwen3-4B encoding of the same prompt at the same layer (mean and median over dimensions).

Attention sinks are found once per sequence and layer (`sinks.find_sinks`) in the VL rows with the image, the VL
rows without it and the text encoder's rows; they are reported (position, token, dims, values) and left out of
every statistic above (span statistics, std ratios, influence and correlation use content rows only).
`print_report` shows a report in a terminal (`llm-dit inspect` without `--json`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from ..maths.outliers import std_ratios
from ..maths.refstats import ReferenceStats
from ..maths.sinks import SINK_RATIO, describe_sinks, find_sinks, sink_lines
from ..maths.stats import describe
from ..models.text import TextEncoder, render_prompt
from ..models.vl import VLEmbeddingExtractor, find_spans


def ratio_summary(rows: torch.Tensor, reference: ReferenceStats, threshold: float = 10.0) -> dict[str, Any]:
    """Median, worst five (most severe by max(r, 1/r)) and outlier counts in both directions of
    `std(rows_d) / ref_std_d`."""
    if rows.shape[0] < 2:
        return {"rows": int(rows.shape[0])}
    r = std_ratios(rows, reference)
    severity = torch.maximum(r, 1 / r.clamp_min(1e-12))
    worst = torch.argsort(severity, descending=True)[:5]
    return {
        "rows": int(rows.shape[0]),
        "median": float(r.median()),
        "worst": [(int(d), float(r[d])) for d in worst],
        "outliers_above": int((r > threshold).sum()),
        "outliers_below": int((r < 1 / threshold).sum()),
    }


def dimension_correlation(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Pearson correlation per dimension between aligned rows `a`, `b` `[n, D]` (n >= 2); dimensions with zero
    variance on either side are left out. Returns mean and median over dimensions."""
    a, b = a.float() - a.float().mean(0), b.float() - b.float().mean(0)
    denom = a.norm(dim=0) * b.norm(dim=0)
    ok = denom > 1e-12
    r = (a * b).sum(0)[ok] / denom[ok]
    if r.numel() == 0:
        return {"mean": float("nan"), "median": float("nan"), "dims": 0}
    return {"mean": float(r.mean()), "median": float(r.median()), "dims": int(r.numel())}


@torch.no_grad()
def inspect_layers(
    extractor: VLEmbeddingExtractor,
    text_encoder: TextEncoder,
    image: Image.Image,
    prompt: str,
    layers: Sequence[int],
    references: dict[int, ReferenceStats],
    *,
    system_prompt: str | None = None,
    text_system_prompt: str | None = None,
    think_block: bool = False,
    sink_ratio: float = SINK_RATIO,
) -> dict[str, Any]:
    """The per-layer report described in the module docstring. `system_prompt` goes into both VL templates;
    the text encoder renders the prompt with `text_system_prompt` and `think_block` (`text.render_prompt`)."""
    with_img, ids, vl_prompt, _ = extractor.hidden_rows(image, prompt, layers, system_prompt)
    without, ids_txt, _, _ = extractor.hidden_rows(None, prompt, layers, system_prompt)
    spans = find_spans(ids, extractor.ids["start"], extractor.ids["end"], extractor.ids["pad"])
    rendered = render_prompt(text_encoder.tokenizer, prompt, text_system_prompt, think_block)
    te_ids = text_encoder.tokenizer(rendered, add_special_tokens=False)
    te_rows = text_encoder.hidden_rows(te_ids.input_ids, layers)

    # The prompt rows after the image block end the with-image sequence; align the three sequences on that tail.
    n = spans.after[1] - spans.after[0]
    n = min(n, len(ids_txt), len(te_ids.input_ids))
    aligned_ids = ids[-n:] == ids_txt[-n:] == te_ids.input_ids[-n:]

    report: dict[str, Any] = {
        "prompt": vl_prompt.replace("<|image_pad|>", "")[:2000],
        "spans": spans.as_dict(),
        "prompt_rows": n,
        "prompt_rows_token_match": aligned_ids,
        "layers": {},
    }

    def vl_token(position: int) -> str:
        return extractor.tokenizer.decode([ids[position]])

    def te_token(position: int) -> str:
        return text_encoder.tokenizer.decode([te_ids.input_ids[position]])

    for layer in layers:
        h, te = with_img[layer], te_rows[layer].float()
        sinks = {"vl": find_sinks(h, sink_ratio), "text_encoder": find_sinks(te, sink_ratio)}
        content = ~sinks["vl"]
        span_rows = {}
        for name in ("before", "image", "image_pad", "after"):
            part = slice(*getattr(spans, name))
            span_rows[name] = h[part][content[part]]
        text_rows = torch.cat([span_rows["before"], span_rows["after"]])
        ref = references[layer]
        # the prompt rows compared below: content rows in all three sequences
        tail = ~(sinks["vl"][-n:] | find_sinks(without[layer], sink_ratio)[-n:] | sinks["text_encoder"][-n:])
        h_img, h_txt = h[-n:][tail], without[layer][-n:][tail]
        report["layers"][str(layer)] = {
            "tokens": {name: len(range(*getattr(spans, name))) for name in span_rows},
            "sinks": {
                "vl": describe_sinks(h, sinks["vl"], sink_ratio, token=vl_token),
                "text_encoder": describe_sinks(te, sinks["text_encoder"], sink_ratio, token=te_token),
            },
            "span_stats": {k: describe(v) for k, v in span_rows.items() if v.numel()},
            "std_ratio_image_pad": ratio_summary(span_rows["image_pad"], ref),
            "std_ratio_text": ratio_summary(text_rows, ref),
            "prompt_content_rows": int(tail.sum()),
            "image_influence": float((h_img - h_txt).norm() / h_txt.norm().clamp_min(1e-12)),
            "correlation_with_text_encoder": dimension_correlation(h_img, te[-n:][tail]),
        }
    return report


def print_report(report: dict[str, Any], out: Console) -> None:
    """An `inspect_layers` report for a terminal: per layer, a table of the spans (tokens, mean, std), then the std
    ratios, image influence, correlation and attention sinks (one line each, `sinks.sink_lines`)."""
    for layer, r in report["layers"].items():
        table = Table(title=f"layer {layer}", show_header=True)
        for col in ("span", "tokens", "mean", "std"):
            table.add_column(col)
        for span, n in r["tokens"].items():
            st = r["span_stats"].get(span, {})
            table.add_row(span, str(n), f"{st.get('mean', float('nan')):.4g}", f"{st.get('std', float('nan')):.4g}")
        out.print(table)
        for key in ("std_ratio_image_pad", "std_ratio_text"):
            if "median" in (ratio := r[key]):
                out.print(
                    f"  {key}: median {ratio['median']:.3g}, outliers above {ratio['outliers_above']}, "
                    f"below {ratio['outliers_below']}, worst {[(d, round(x, 3)) for d, x in ratio['worst']]}"
                )
        corr = r["correlation_with_text_encoder"]
        out.print(
            f"  image influence at prompt rows: {r['image_influence']:.4g}; "
            f"per-dim correlation with the text encoder: mean {corr['mean']:.3g}, median {corr['median']:.3g}"
        )
        for who, found in r["sinks"].items():
            label = "VL" if who == "vl" else "text encoder"
            out.print(
                f"  attention sinks ({label}, ratio {found['ratio']:g}): {found['count'] or 'none'}", markup=False
            )
            for line in sink_lines(found["rows"]):
                out.print(f"    {line}", markup=False, highlight=False)
