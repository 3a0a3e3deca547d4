"""The `nla` command: a thin layer that parses options, calls the Python API and prints. No logic of its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nlakit.errors import NlakitError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Natural Language Autoencoders for HF causal LMs.")
console = Console()


def _layers(spec: str) -> list[int]:
    try:
        return sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise NlakitError(f"--layer {spec!r} must be an integer or a comma-separated list such as 10,15,20") from None


@app.command()
def extract(
    model: Annotated[str, typer.Option(help="Alias (smollm2-135m, tiny) or local HF model folder.")],
    layer: Annotated[
        str, typer.Option(help="Block index K (output of block K = hidden_states[K+1]); e.g. 20 or 10,15,20.")
    ],
    corpus: Annotated[str, typer.Option(help="wiki, a .txt/.jsonl/.parquet file, or hf:NAME.")],
    out: Annotated[Path, typer.Option(help="Output folder (one subfolder per layer when several are given).")],
    positions_per_doc: int = 5,
    min_position: Annotated[int, typer.Option(help="Earliest token index sampled (0 is never used).")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Documents are truncated to this many tokens.")] = 256,
    max_docs: Annotated[int | None, typer.Option(help="Use only the first N documents.")] = None,
    seed: int = 0,
    dtype: Annotated[str, typer.Option(help="auto, float32 or bfloat16.")] = "auto",
    device: str = "cpu",
    batch_size: int = 16,
) -> None:
    """Extract residual-stream activations to parquet + nla_meta.yaml (resumes if interrupted)."""
    from nlakit.extract import ExtractConfig
    from nlakit.extract import extract as run

    cfg = ExtractConfig(
        model=model,
        layers=_layers(layer),
        corpus=corpus,
        out=out,
        positions_per_doc=positions_per_doc,
        min_position=min_position,
        max_tokens=max_tokens,
        max_docs=max_docs,
        seed=seed,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
    )
    result = run(cfg)
    for k, n in result.rows.items():
        console.print(f"layer {k}: {n} rows -> {cfg.layer_dir(k)}")
    if result.tokens:
        console.print(f"{result.tokens} tokens in {result.seconds:.1f} s ({result.tokens_per_s:.0f} tokens/s)")


@app.command()
def split(
    src: Annotated[Path, typer.Argument(help="Activations dataset folder.")],
    out: Annotated[Path, typer.Option(help="Folder for train/, val/, test/.")],
    fractions: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    seed: int = 42,
) -> None:
    """Seeded document-level train/val/test split."""
    from nlakit.dataset import split as run

    try:
        parts = [float(x) for x in fractions.split(",")]
    except ValueError:
        raise NlakitError(f"--fractions {fractions!r} must be three numbers such as 0.8,0.1,0.1") from None
    if len(parts) != 3:
        raise NlakitError(f"--fractions {fractions!r} must give exactly three numbers (train,val,test)")
    counts = run(src, out, dict(zip(("train", "val", "test"), parts, strict=True)), seed)
    for name, n in counts.items():
        console.print(f"{name}: {n} rows -> {out / name}")


@app.command()
def datagen(
    src: Annotated[Path, typer.Argument(help="Activations dataset folder (from `nla extract`).")],
    out: Annotated[Path, typer.Option(help="Output dataset folder (source + explanation column).")],
    provider: Annotated[str, typer.Option(help="grounded (offline), openai or anthropic.")] = "grounded",
    model: Annotated[str | None, typer.Option(help="grounded: the target model; API: the chat model.")] = None,
    base_url: Annotated[str | None, typer.Option(help="API base URL (any OpenAI-compatible server).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key.")] = None,
    concurrency: Annotated[int, typer.Option(help="API: requests in flight.")] = 8,
    seed: Annotated[int, typer.Option(help="grounded: template seed.")] = 0,
    max_rows: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
) -> None:
    """Add warm-start explanations (resumable, cached by context hash)."""
    from nlakit.datagen import datagen as run
    from nlakit.explainers import make_explainer
    from nlakit.meta import read_dataset_meta

    if provider == "grounded":
        options = {"model": model or read_dataset_meta(src).extraction.base_model, "seed": seed}
    else:
        options = {k: v for k, v in {"model": model, "base_url": base_url, "api_key_env": api_key_env}.items() if v}
        options["concurrency"] = concurrency
    result = run(src, out, make_explainer(provider, **options), max_rows=max_rows)
    console.print(f"{result.rows} rows with explanations -> {out} ({result.dropped} dropped)")
    if result.explained_now:
        console.print(f"{result.explained_now} explained in {result.seconds:.1f} s ({result.rows_per_s:.1f} rows/s)")


train_app = typer.Typer(no_args_is_help=True, help="Training recipes (typed configs; key=value overrides).")
app.add_typer(train_app, name="train")

_OVERRIDES = typer.Argument(help="Config overrides such as lr=1e-4 max_steps=200.")


@train_app.command("ar")
def train_ar_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML config (SFTConfig fields).")] = None,
    overrides: Annotated[list[str] | None, _OVERRIDES] = None,
) -> None:
    """AR SFT: explanation -> activation, MSE at the last token. Resumes from out/train_ar/checkpoints."""
    from nlakit.train.config import SFTConfig, load_config
    from nlakit.train.sft_ar import train_ar

    result = train_ar(load_config(SFTConfig, config, overrides))
    console.print({k: round(v, 4) for k, v in result.items()})


@train_app.command("av")
def train_av_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML config (SFTConfig fields).")] = None,
    overrides: Annotated[list[str] | None, _OVERRIDES] = None,
) -> None:
    """AV SFT: injected activation -> explanation, response NLL. Resumes from out/train_av/checkpoints."""
    from nlakit.train.config import SFTConfig, load_config
    from nlakit.train.sft_av import train_av

    result = train_av(load_config(SFTConfig, config, overrides))
    console.print({k: round(v, 4) for k, v in result.items()})


@train_app.command("rl")
def train_rl_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML config (RLConfig fields).")] = None,
    overrides: Annotated[list[str] | None, _OVERRIDES] = None,
) -> None:
    """Joint RL: GRPO for the AV with the live AR's reward, AR trained on the fresh explanations. Resumes."""
    from nlakit.train.config import load_config
    from nlakit.train.rl import RLConfig, train_rl

    result = train_rl(load_config(RLConfig, config, overrides))
    console.print({k: round(v, 4) for k, v in result.items()})


_NLA_OPT = typer.Option("--nla", help="NLA folder (av/ + ar/) or a shipped name.")


def _positions(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise NlakitError(f"--positions {text!r} must be comma-separated integers") from None


def _print_explanations(model, rows) -> None:
    table = Table(title=f"{model.target}, layer {model.layer}", show_lines=True)
    for col in ("pos", "token", "explanation", "cos", "fve"):
        table.add_column(col, overflow="fold")
    for r in rows:
        fve = "" if r.fve_nrm is None else f"{r.fve_nrm:.2f}"
        table.add_row(str(r.position), repr(r.token), r.explanation, f"{r.cos:.2f}", fve)
    console.print(table)


@app.command()
def explain(
    text: Annotated[str, typer.Argument(help="The text to explain, token by token.")],
    nla: Annotated[str, _NLA_OPT] = "smollm2-135m-L20",
    positions: Annotated[str | None, typer.Option(help="Comma-separated token positions (default: all but 0).")] = None,
    max_new_tokens: int = 120,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    dtype: str = "auto",
    device: str = "cpu",
) -> None:
    """Per-token explanations of TEXT with reconstruction fidelity (cos, fve_nrm)."""
    import json

    from nlakit.io import atomic_write_text
    from nlakit.nla import NLA

    model = NLA.from_pretrained(nla, device=device, dtype=dtype)
    rows = model.explain(text, _positions(positions) if positions else None, max_new_tokens=max_new_tokens)
    _print_explanations(model, rows)
    if json_out:
        payload = {"text": text, "target": model.target, "layer": model.layer, "tokens": [r.to_dict() for r in rows]}
        atomic_write_text(json_out, json.dumps(payload, indent=1, ensure_ascii=False))
        console.print(f"wrote {json_out}")


@app.command()
def verbalize(
    dataset: Annotated[Path, typer.Argument(help="Activations dataset folder (or a reference parquet).")],
    nla: Annotated[str, _NLA_OPT] = "smollm2-135m-L20",
    n: Annotated[int, typer.Option(help="How many rows, from the start.")] = 3,
    temperature: float = 0.0,
    max_new_tokens: int = 120,
) -> None:
    """Explanations for activation vectors read from a dataset."""
    from nlakit import dataset as ds
    from nlakit.nla import NLA

    table = ds.read_table(dataset).slice(0, n)
    vectors = ds.vectors_of(table)
    model = NLA.from_pretrained(nla)
    texts = model.verbalize(vectors, temperature=temperature, max_new_tokens=max_new_tokens)
    contexts = table.column("context").to_pylist() if "context" in table.column_names else [""] * len(texts)
    for ctx, vec, text in zip(contexts, vectors, texts, strict=True):
        console.print(f"[bold]context[/] …{ctx[-80:]!r}  ‖v‖={float((vec**2).sum() ** 0.5):.1f}\n{text}\n")


@app.command()
def reconstruct(
    text: Annotated[str, typer.Argument(help="An explanation to reconstruct.")],
    nla: Annotated[str, _NLA_OPT] = "smollm2-135m-L20",
    out: Annotated[Path | None, typer.Option(help="Save the vector as .npy.")] = None,
) -> None:
    """The AR's reconstruction of one explanation (prints its norm and first values; --out saves it)."""
    import numpy as np

    from nlakit.nla import NLA

    vec = NLA.from_pretrained(nla).reconstruct(text)[0].numpy()
    console.print(f"d={vec.shape[0]} norm={np.linalg.norm(vec):.2f} first values: {np.round(vec[:6], 3).tolist()}")
    if out:
        np.save(out, vec)
        console.print(f"wrote {out}")


@app.command("eval")
def eval_cmd(
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.md and the PNG plots.")],
    nla: Annotated[str | None, _NLA_OPT] = None,
    av: Annotated[str | None, typer.Option(help="AV folder (e.g. a reference checkpoint); overrides --nla's.")] = None,
    ar: Annotated[str | None, typer.Option(help="AR folder (e.g. a reference checkpoint); overrides --nla's.")] = None,
    texts: Annotated[Path | None, typer.Option(help=".txt (blank-line separated) or .jsonl with a text field.")] = None,
    corpus: Annotated[str | None, typer.Option(help="Corpus name (wiki) or file.")] = None,
    split: Annotated[
        str | None, typer.Option(help="train/val/test: that split of --corpus, cut as `nla split`.")
    ] = None,
    split_seed: int = 42,
    train_data: Annotated[Path | None, typer.Option(help="Activations for the nearest-neighbour baseline.")] = None,
    max_positions: int = 256,
    positions_per_doc: int = 3,
    seed: int = 0,
    steer_alpha: float = 1.0,
    dtype: str = "auto",
    device: str = "cpu",
) -> None:
    """Fidelity, baselines, steganography probes and causal checks for an NLA on held-out text."""
    from nlakit.eval import EvalConfig, run_eval

    if nla is None and not (av or ar):
        nla = "smollm2-135m-L20"
    cfg = EvalConfig(
        out=str(out),
        nla=nla,
        av=av,
        ar=ar,
        texts=str(texts) if texts else None,
        corpus=corpus,
        split=split,
        split_seed=split_seed,
        train_data=str(train_data) if train_data else None,
        max_positions=max_positions,
        positions_per_doc=positions_per_doc,
        seed=seed,
        steer_alpha=steer_alpha,
        device=device,
        dtype=dtype,
    )
    r = run_eval(cfg)
    console.print(
        f"n={r['n']} fve_nrm={r['fve_nrm']:.3f} cos={r['cos_mean']:.3f} mse_nrm={r['mse_nrm']:.3f}; "
        f"round-trip KL {r['round_trip']['reconstruction']['kl_mean']:.3f} (mean vector "
        f"{r['round_trip']['mean']['kl_mean']:.3f}); wrote {out}/report.md"
    )


@app.command()
def serve(
    nla: Annotated[str, _NLA_OPT] = "smollm2-135m-L20",
    host: Annotated[str, typer.Option(help="Address to bind; the default keeps the viewer on this machine.")] = (
        "127.0.0.1"
    ),
    port: int = 8000,
    dtype: str = "auto",
    device: str = "cpu",
) -> None:
    """Local web viewer: per-token explanations coloured by fidelity, next-token predictions, steering by edits."""
    from nlakit.serve import allowed_hosts_for
    from nlakit.serve import serve as run

    if allowed_hosts_for(host) is None:
        console.print(f"[yellow]warning:[/] binding {host} lets other machines use this model; there is no login")
    run(nla, host=host, port=port, dtype=dtype, device=device)


@app.command()
def export(
    src: Annotated[str, typer.Argument(help="NLA folder to export (its train_* run state is left out).")],
    dest: Annotated[Path, typer.Argument(help="Destination folder.")],
    dtype: Annotated[str, typer.Option(help="Storage dtype of the LoRA adapter weights.")] = "bfloat16",
) -> None:
    """Copy an NLA for shipping: av/, ar/ and sidecars, adapters stored in bf16 by default."""
    from nlakit.nla import export as run

    sizes = run(src, dest, dtype)
    console.print(f"wrote {dest}: {len(sizes)} files, {sum(sizes.values()) / 2**20:.1f} MiB")


DEMO_PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was designed by"


@app.command()
def demo(
    text: Annotated[str, typer.Argument(help="The prompt to explain.")] = DEMO_PROMPT,
    nla: Annotated[str, _NLA_OPT] = "smollm2-135m-L20",
    positions: Annotated[str | None, typer.Option(help="Comma-separated positions (default: the last 8).")] = None,
) -> None:
    """The main job on the embedded default: per-token explanations of a sample prompt by the shipped NLA."""
    from nlakit.nla import NLA

    model = NLA.from_pretrained(nla)
    n = len(model.activations(text)[0])
    chosen = _positions(positions) if positions else list(range(max(1, n - 8), n))
    console.print(f"[bold]nlakit demo[/]: {model.target}, layer {model.layer}; explaining {len(chosen)} of {n} tokens")
    _print_explanations(model, model.explain(text, chosen))


def main() -> None:
    try:
        app(standalone_mode=False)
    except NlakitError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
