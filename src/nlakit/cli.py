"""The `nla` command: a thin layer that parses options, calls the Python API and prints. No logic of its own.

Every usage mistake and every bad input file ends in one `error: ...` line on stderr and exit status 2 (`main`);
inputs are checked before any model loads, so a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nlakit.config import (
    DEFAULT_NLA,
    EvalConfig,
    ExplainConfig,
    ExtractConfig,
    ModelConfig,
    ServeConfig,
    SynthConfig,
    VerbalizeConfig,
    load_config,
)
from nlakit.errors import NlakitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Natural Language Autoencoders for HF causal LMs.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,  # a real bug keeps Python's plain traceback; bad input never reaches it
)
console = Console()
err_console = Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        from nlakit import __version__

        typer.echo(f"nlakit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Natural Language Autoencoders for HF causal LMs: extract, datagen, split, train, explain, eval, serve."""


# ---- options shared by the commands that load a model: defined once, so they mean the same everywhere ----------------
# The defaults pass without importing torch, so that a usage mistake is reported in a fraction of a second.
def _check_dtype(value: str) -> str:
    if value.lower() != "auto":  # `auto` is resolved (and may be probed) when the model loads
        from nlakit.models import resolve_dtype

        try:
            resolve_dtype(value)
        except NlakitError as e:
            raise typer.BadParameter(str(e)) from None
    return value


def _check_device(value: str) -> str:
    if value == "cpu":
        return value
    from nlakit.models import check_device

    try:
        check_device(value)
    except NlakitError as e:
        raise typer.BadParameter(str(e)) from None
    return value


NlaOpt = Annotated[
    str | None, typer.Option("--nla", help=f"NLA folder (av/ + ar/) or a shipped name (default {DEFAULT_NLA}).")
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.", callback=_check_device)]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="Compute dtype: auto, float32, bfloat16 or float16 (auto: bf16 on CUDA and where the CPU runs it faster).",
        callback=_check_dtype,
    ),
]
TemperatureOpt = Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy (deterministic).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
BestOfOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Candidates per position: the greedy text and N-1 samples; the AR keeps the one that reconstructs best "
        "(N times the generation time).",
    ),
]

# A released NLA is two folders (AV, AR) whose sidecars name a Hub id as the target: these map it to local folders.
AvOpt = Annotated[str | None, typer.Option("--av", help="AV folder (e.g. a released NLA's); overrides --nla's.")]
ArOpt = Annotated[str | None, typer.Option("--ar", help="AR folder (e.g. a released NLA's); overrides --nla's.")]
TargetOpt = Annotated[
    str | None,
    typer.Option("--target", help="Local folder of the target model (released sidecars name a Hub id)."),
]
LayerOpt = Annotated[int | None, typer.Option("--layer", min=0, help="K, for an AV sidecar that records none.")]
InjectionScaleOpt = Annotated[
    float | None, typer.Option("--injection-scale", min=0.0, help="Override the AV sidecar's injection_scale.")
]
RawvarOpt = Annotated[
    float | None, typer.Option("--rawvar", min=0.0, help="FVE denominator when the AR sidecar records none.")
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Activations dataset to compute the FVE denominator (rawvar) from.")
]
DeviceMapOpt = Annotated[
    str | None, typer.Option("--device-map", help="accelerate device_map (auto, cpu) for models too big for a device.")
]
NewTokensOpt = Annotated[
    int | None, typer.Option(min=1, help="Longest explanation, in tokens (default: the AV's training cap, else 200).")
]


def _layers(spec: str) -> list[int]:
    try:
        return sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise NlakitError(f"--layer {spec!r} must be an integer or a comma-separated list such as 10,15,20") from None


ConfigOpt = Annotated[
    Path | None, typer.Option(help="YAML config (the command's config fields).", exists=True, dir_okay=False)
]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="Config overrides such as lr=1e-4 max_steps=200.")]


def _config(cls, ctx: typer.Context, config: Path | None = None, overrides: list[str] | None = None, **converted):
    """Every command's config, one way: `cls`'s defaults, then the YAML (--config), then the options typed on this
    command line (an option left at its default never overrides the YAML), then key=value overrides. An option
    sets the config field of its own name; `converted` holds the typed options whose CLI spelling differs from the
    field (e.g. --layer 10,15 -> layers, --positions 3,4 -> [3, 4])."""
    fields = {f.name for f in dataclasses.fields(cls)}
    typed = {name for name in ctx.params if ctx.get_parameter_source(name).name == "COMMANDLINE"}
    values = {
        name: str(ctx.params[name]) if isinstance(ctx.params[name], Path) else ctx.params[name]
        for name in typed & fields
        if name not in converted
    }
    values.update({name: value for name, value in converted.items() if value is not None and name in fields})
    return load_config(cls, config, overrides, values)


@app.command()
def extract(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Alias (smollm2-135m, tiny) or local HF model folder.")] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Block index K (output of block K = hidden_states[K+1]); e.g. 20 or 10,15,20."),
    ] = None,
    corpus: Annotated[str | None, typer.Option(help="wiki, a .txt/.jsonl/.parquet file, or hf:NAME.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (one subfolder per layer when several are given).")
    ] = None,
    positions_per_doc: Annotated[
        int, typer.Option(min=1, help="Token positions sampled per document.")
    ] = ExtractConfig.positions_per_doc,
    min_position: Annotated[
        int, typer.Option(min=1, help="Earliest token index sampled (0 is never used).")
    ] = ExtractConfig.min_position,
    max_tokens: Annotated[
        int, typer.Option(min=2, help="Documents are truncated to this many tokens.")
    ] = ExtractConfig.max_tokens,
    max_docs: Annotated[int | None, typer.Option(min=1, help="Use only the first N documents.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the position sampling (keyed per document).")] = 0,
    dtype: DtypeOpt = ExtractConfig.dtype,
    device: DeviceOpt = ExtractConfig.device,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per forward pass.")] = ExtractConfig.batch_size,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Extract residual-stream activations to parquet + nla_meta.yaml (resumes if interrupted). Options, a YAML
    --config (ExtractConfig) and key=value overrides all set the same fields."""
    from nlakit.extract import extract as run

    cfg = _config(ExtractConfig, ctx, config, overrides, layer=None, layers=_layers(layer) if layer else None)
    result = run(cfg)
    for k, n in result.rows.items():
        console.print(f"layer {k}: {n} rows -> {cfg.layer_dir(k)}")
    if result.tokens:
        console.print(f"{result.tokens} tokens in {result.seconds:.1f} s ({result.tokens_per_s:.0f} tokens/s)")


@app.command()
def synth(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Output .jsonl corpus (id, text, register, prompt).")] = None,
    registers: Annotated[
        str | None, typer.Option(help="Comma-separated: chat, fiction, news, reviews, instructions, code.")
    ] = ",".join(SynthConfig.registers),
    model: Annotated[str, typer.Option(help="The target that writes the generated registers.")] = SynthConfig.model,
    docs_per_register: Annotated[
        int, typer.Option(min=1, help="Documents per register.")
    ] = SynthConfig.docs_per_register,
    seed: Annotated[int, typer.Option(help="Seeds prompts and sampling.")] = SynthConfig.seed,
    dtype: DtypeOpt = SynthConfig.dtype,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Write an offline corpus in other registers (chat in the target's template, fiction, code, ...)."""
    from nlakit.synth import synthesize

    typed = ctx.get_parameter_source("registers").name == "COMMANDLINE"
    chosen = tuple(r.strip() for r in registers.split(",") if r.strip()) if typed and registers else None
    cfg = _config(SynthConfig, ctx, config, overrides, registers=chosen)
    for register, n in synthesize(cfg).items():
        console.print(f"{register}: {n} documents")
    console.print(f"-> {cfg.out}")


@app.command()
def split(
    src: Annotated[
        list[Path], typer.Argument(help="Activations dataset folder(s); several are split together.", exists=True)
    ],
    out: Annotated[Path, typer.Option(help="Folder for train/, val/, test/.")],
    fractions: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seeds which documents go to which split.")] = 42,
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
    src: Annotated[Path, typer.Argument(help="Activations dataset folder (from `nla extract`).", exists=True)],
    out: Annotated[Path, typer.Option(help="Output dataset folder (source + explanation column).")],
    provider: Annotated[
        str, typer.Option(help="grounded (offline teacher), nla (an NLA's own AV, from vectors), openai, anthropic.")
    ] = "grounded",
    model: Annotated[
        str | None, typer.Option(help="grounded: the target model; nla: the NLA folder; API: the chat model.")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="API base URL (any OpenAI-compatible server).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key.")] = None,
    concurrency: Annotated[int, typer.Option(help="API: requests in flight.")] = 8,
    max_rows: Annotated[
        int | None, typer.Option(min=1, help="Only N rows: the first N, or a sample (--sample-seed).")
    ] = None,
    sample_seed: Annotated[
        int | None,
        typer.Option(min=0, help="With --max-rows: a seeded sample of N rows from the whole source, not the first N."),
    ] = None,
    best_of: Annotated[
        int, typer.Option(min=1, help="nla: keep the AR's pick of the greedy text and N-1 samples (expert iteration).")
    ] = 1,
) -> None:
    """Add warm-start explanations (resumable, cached by context hash)."""
    from nlakit.datagen import datagen as run
    from nlakit.explainers import make_explainer
    from nlakit.meta import read_dataset_meta

    if best_of > 1 and provider != "nla":
        raise NlakitError(f"--best-of picks by an NLA's AR, so it needs --provider nla (got {provider})")
    if provider == "nla":
        options = {"model": model or DEFAULT_NLA, "best_of": best_of}
    elif provider == "grounded":
        options = {"model": model or read_dataset_meta(src).extraction.base_model}
    else:
        options = {k: v for k, v in {"model": model, "base_url": base_url, "api_key_env": api_key_env}.items() if v}
        options["concurrency"] = concurrency
    result = run(src, out, make_explainer(provider, **options), max_rows=max_rows, sample_seed=sample_seed)
    console.print(f"{result.rows} rows with explanations -> {out} ({result.dropped} dropped)")
    if result.explained_now:
        console.print(f"{result.explained_now} explained in {result.seconds:.1f} s ({result.rows_per_s:.1f} rows/s)")


train_app = typer.Typer(no_args_is_help=True, help="Training recipes (typed configs; key=value overrides).")
app.add_typer(train_app, name="train")


def _train(recipe: str, config: Path | None, overrides: list[str] | None) -> None:
    """One path for every recipe: typed config from YAML and/or key=value overrides, run, print the last numbers."""
    from nlakit.config import SFTConfig

    if recipe == "rl":
        from nlakit.config import RLConfig as cls
        from nlakit.train.rl import train_rl as run
    else:
        cls = SFTConfig
        if recipe == "ar":
            from nlakit.train.sft_ar import train_ar as run
        else:
            from nlakit.train.sft_av import train_av as run
    result = run(load_config(cls, config, overrides))
    console.print({k: round(v, 4) for k, v in result.items()})


@train_app.command("ar")
def train_ar_cmd(config: ConfigOpt = None, overrides: OverridesArg = None) -> None:
    """AR SFT: explanation -> activation, MSE at the last token (SFTConfig). Resumes from out/train_ar/checkpoints;
    rerun with a larger max_steps or epochs to continue a finished run."""
    _train("ar", config, overrides)


@train_app.command("av")
def train_av_cmd(config: ConfigOpt = None, overrides: OverridesArg = None) -> None:
    """AV SFT: injected activation -> explanation, response NLL (SFTConfig). Resumes from out/train_av/checkpoints;
    rerun with a larger max_steps or epochs to continue a finished run."""
    _train("av", config, overrides)


@train_app.command("rl")
def train_rl_cmd(config: ConfigOpt = None, overrides: OverridesArg = None) -> None:
    """Joint RL: GRPO for the AV with the live AR's reward, AR trained on the fresh explanations (RLConfig).
    Resumes; rerun with a larger max_steps to continue a finished run."""
    _train("rl", config, overrides)


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise NlakitError(f"--steer-alphas {text!r} must be numbers separated by commas, e.g. 0.25,0.5,1") from None
    if not values or not all(math.isfinite(a) for a in values):
        raise NlakitError(f"--steer-alphas {text!r} must give at least one finite number, e.g. 0.25,0.5,1")
    return values


def _positions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        chosen = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise NlakitError(f"--positions {text!r} must be comma-separated integers") from None
    if not chosen:
        raise NlakitError("--positions is empty; give token positions such as 3,4,5 or leave it out")
    return chosen


def _require_text(text: str, what: str) -> str:
    """Checked here, before a model loads: the same check inside the library would come after seconds of loading."""
    if not text.strip():
        raise NlakitError(f"the {what} is empty; give at least one word")
    return text


def _dtype_note(dtype: str, device: str) -> None:
    """What `--dtype auto` chose on this machine, and why, on stderr (stdout stays the result)."""
    if dtype.lower() == "auto":
        from nlakit.models import auto_dtype_note

        err_console.print(f"[dim]note: dtype {auto_dtype_note(device)}[/]", soft_wrap=True)


def _load(cfg: ModelConfig):
    from nlakit.nla import NLA

    model = NLA.from_config(cfg)
    _dtype_note(cfg.dtype, cfg.device)  # after the load: a bad path is one error line, not a note and an error
    return model


def _explain(model, text: str, cfg: ExplainConfig) -> list:
    """`NLA.explain` with a progress bar, after a notice on stderr if the text is longer than the NLA reads."""
    from nlakit.progress import progress_bar

    ids = model.tokenize(text)
    full = len(model.target_tokenizer()(text, add_special_tokens=True, verbose=False)["input_ids"])
    if full > len(ids):
        err_console.print(f"note: the text has {full} tokens; only the first {len(ids)} are read and explained")
    chosen = list(range(1 if len(ids) > 1 else 0, len(ids))) if cfg.positions is None else cfg.positions
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        bar.advance(n - done)
        done = n

    with progress_bar("explaining", total=len(chosen)) as bar:
        return model.explain(
            text,
            chosen,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            best_of=cfg.best_of,
            sample_temperature=cfg.sample_temperature,
            progress=advance,
        )


def _print_explanations(model, rows) -> None:
    table = Table(title=f"{model.target}, layer {model.layer}", show_lines=True)
    for col in ("pos", "token", "explanation", "cos", "fve"):
        table.add_column(col, overflow="fold")
    for r in rows:
        fve = "" if r.fve_nrm is None else f"{r.fve_nrm:.2f}"
        table.add_row(str(r.position), repr(r.token), r.explanation, f"{r.cos:.2f}", fve)
    console.print(table)


# explain and demo explain the same positions by default: every token but 0 (an attention sink whose activation
# carries no meaning of its own), as `NLA.explain` and the web viewer do.
PositionsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated token positions (default: every token but 0, the attention sink).")
]


@app.command()
def explain(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The text to explain, token by token.")],
    nla: NlaOpt = None,
    positions: PositionsOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    max_new_tokens: NewTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    best_of: BestOfOpt = 1,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    av: AvOpt = None,
    ar: ArOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    injection_scale: InjectionScaleOpt = None,
    rawvar: RawvarOpt = None,
    data: DataOpt = None,
    device_map: DeviceMapOpt = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Per-token explanations of TEXT with reconstruction fidelity (cos, fve_nrm). Options, a YAML --config
    (ExplainConfig) and key=value overrides after TEXT all set the same fields."""
    import json

    from nlakit.io import atomic_write_text

    _require_text(text, "text")
    cfg = _config(ExplainConfig, ctx, config, overrides, positions=_positions(positions))
    model = _load(cfg)
    rows = _explain(model, text, cfg)
    _print_explanations(model, rows)
    if json_out:
        payload = {"text": text, "target": model.target, "layer": model.layer, "tokens": [r.to_dict() for r in rows]}
        atomic_write_text(json_out, json.dumps(payload, indent=1, ensure_ascii=False))
        console.print(f"wrote {json_out}")


@app.command()
def verbalize(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(help="Activations dataset folder (or a reference parquet).", exists=True)],
    nla: NlaOpt = None,
    n: Annotated[int, typer.Option(min=1, help="How many rows, from the start.")] = VerbalizeConfig.n,
    max_new_tokens: NewTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    av: AvOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    injection_scale: InjectionScaleOpt = None,
    device_map: DeviceMapOpt = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Explanations for activation vectors read from a dataset (VerbalizeConfig: options, --config, key=value)."""
    from nlakit import dataset as ds

    cfg = _config(VerbalizeConfig, ctx, config, overrides)
    table = ds.read_table(dataset).slice(0, cfg.n)  # read (and checked) before the models load
    vectors = ds.vectors_of(table)
    texts = _load(cfg).verbalize(vectors, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    contexts = table.column("context").to_pylist() if "context" in table.column_names else [""] * len(texts)
    for ctx_text, vec, text in zip(contexts, vectors, texts, strict=True):
        console.print(f"[bold]context[/] …{ctx_text[-80:]!r}  ‖v‖={float((vec**2).sum() ** 0.5):.1f}\n{text}\n")


@app.command()
def reconstruct(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="An explanation to reconstruct.")],
    nla: NlaOpt = None,
    out: Annotated[Path | None, typer.Option(help="Save the vector as .npy.")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    ar: ArOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    device_map: DeviceMapOpt = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """The AR's reconstruction of one explanation (prints its norm and first values; --out saves it). ModelConfig:
    options, --config and key=value overrides after TEXT."""
    import numpy as np

    _require_text(text, "explanation")
    cfg = _config(ModelConfig, ctx, config, overrides)
    vec = _load(cfg).reconstruct(text)[0].float().numpy()
    console.print(f"d={vec.shape[0]} norm={np.linalg.norm(vec):.2f} first values: {np.round(vec[:6], 3).tolist()}")
    if out:
        from nlakit.io import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add .npy to a temporary name
                np.save(f, vec)

        atomic_write(out, write)
        console.print(f"wrote {out}")


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Folder for report.json, report.md and the PNG plots.")] = None,
    nla: NlaOpt = None,
    av: AvOpt = None,
    ar: ArOpt = None,
    texts: Annotated[
        Path | None, typer.Option(help=".txt (blank-line separated) or .jsonl with a text field.", exists=True)
    ] = None,
    corpus: Annotated[str | None, typer.Option(help="Corpus name (wiki) or file.")] = None,
    docs_from: Annotated[
        Path | None,
        typer.Option(help="Evaluate exactly these documents: a dataset (e.g. a split's test/) or a .txt of ids."),
    ] = None,
    train_data: Annotated[
        Path | None, typer.Option(help="Training activations: retrieval baseline, oracle, and a no-overlap check.")
    ] = None,
    compare_ar: Annotated[
        str | None, typer.Option(help="Another AR (or NLA folder) reading the same explanations, e.g. before training.")
    ] = None,
    compare_nla: Annotated[
        str | None,
        typer.Option(help="Another NLA (folder or shipped name) explaining the same positions: a paired difference."),
    ] = None,
    max_positions: Annotated[int, typer.Option(min=1, help="Positions scored in all.")] = EvalConfig.max_positions,
    positions_per_doc: Annotated[
        int, typer.Option(min=1, help="Positions sampled per document.")
    ] = EvalConfig.positions_per_doc,
    seed: SeedOpt = EvalConfig.seed,
    steer_alphas: Annotated[
        str, typer.Option(help="Steering strengths to sweep, as fractions of |h| (comma-separated).")
    ] = ",".join(f"{a:g}" for a in EvalConfig.steer_alphas),
    max_new_tokens: NewTokensOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Explanations per batch.")] = EvalConfig.batch_size,
    best_of: BestOfOpt = EvalConfig.best_of,
    device: DeviceOpt = EvalConfig.device,
    dtype: DtypeOpt = EvalConfig.dtype,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    injection_scale: InjectionScaleOpt = None,
    rawvar: RawvarOpt = None,
    data: DataOpt = None,
    device_map: DeviceMapOpt = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Fidelity, baselines, steganography probes and causal checks for an NLA on held-out text. Options, a YAML
    --config (EvalConfig) and key=value overrides (e.g. min_position=8) all set the same fields."""
    from nlakit.eval import run_eval

    typed = ctx.get_parameter_source("steer_alphas").name == "COMMANDLINE"
    cfg = _config(EvalConfig, ctx, config, overrides, steer_alphas=_alphas(steer_alphas) if typed else None)
    r = run_eval(cfg)
    _dtype_note(cfg.dtype, cfg.device)
    console.print(
        f"n={r['n']} fve_nrm={r['fve_nrm']:.3f} cos={r['cos_mean']:.3f} mse_nrm={r['mse_nrm']:.3f}; "
        f"round-trip KL {r['round_trip']['reconstruction']['kl_mean']:.3f} (mean vector "
        f"{r['round_trip']['mean']['kl_mean']:.3f}); wrote {cfg.out}/report.md"
    )


@app.command()
def serve(
    ctx: typer.Context,
    nla: NlaOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; the default keeps the viewer on this machine.")
    ] = ServeConfig.host,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = ServeConfig.port,
    max_waiting: Annotated[
        int, typer.Option(min=0, help="Requests that may wait behind the running one (per queue); the next gets a 429.")
    ] = ServeConfig.max_waiting,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    av: AvOpt = None,
    ar: ArOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    injection_scale: InjectionScaleOpt = None,
    rawvar: RawvarOpt = None,
    data: DataOpt = None,
    device_map: DeviceMapOpt = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Local web viewer: per-token explanations coloured by fidelity, next-token predictions, steering by edits
    (ServeConfig: options, --config, key=value)."""
    from nlakit.serve import allowed_hosts_for
    from nlakit.serve import serve as run

    cfg = _config(ServeConfig, ctx, config, overrides)
    if allowed_hosts_for(cfg.host) is None:
        err_console.print(
            f"[yellow]warning:[/] binding {cfg.host} lets other machines use this model; there is no login"
        )
    run(cfg)


class StorageDtype(str, Enum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


@app.command()
def export(
    src: Annotated[str, typer.Argument(help="NLA folder to export (its train_* run state is left out).")],
    dest: Annotated[Path, typer.Argument(help="Destination folder.")],
    storage_dtype: Annotated[
        StorageDtype,
        typer.Option(help="How the LoRA adapter weights are stored on disk (cast back to the model's dtype on load)."),
    ] = StorageDtype.bfloat16,
    merge: Annotated[
        bool, typer.Option("--merge", help="Full weights in the reference's release layout (LoRA merged in).")
    ] = False,
) -> None:
    """Copy an NLA for shipping: av/, ar/ and sidecars, adapters stored in bf16 by default."""
    from nlakit.nla import export as run

    sizes = run(src, dest, storage_dtype.value, merge=merge)
    console.print(f"wrote {dest}: {len(sizes)} files, {sum(sizes.values()) / 2**20:.1f} MiB")


DEMO_PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was designed by"


@app.command()
def demo(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The prompt to explain.")] = DEMO_PROMPT,
    nla: NlaOpt = None,
    positions: PositionsOpt = None,
    max_new_tokens: NewTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    config: ConfigOpt = None,
) -> None:
    """The main job on the embedded default: per-token explanations of a sample prompt by the shipped NLA (the
    same ExplainConfig as explain)."""
    _require_text(text, "text")
    cfg = _config(ExplainConfig, ctx, config, positions=_positions(positions))
    model = _load(cfg)
    console.print(f"[bold]nlakit demo[/]: {model.target}, layer {model.layer}")
    _print_explanations(model, _explain(model, text, cfg))


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _fail(message: str, status: int = 2) -> None:
    # soft_wrap: one line whatever the terminal width; escape: a message's [brackets] are text, not rich markup
    err_console.print(f"[red]error:[/] {escape(_one_line(message))}", soft_wrap=True)
    sys.exit(status)


# typer >= 0.20 vendors click (typer._click) while older typer uses click itself: find its exception types through the
# public `typer.BadParameter` (a UsageError, itself a ClickException) instead of a private import
_MRO = {c.__name__: c for c in typer.BadParameter.__mro__}
UsageError, ClickException = _MRO["UsageError"], _MRO["ClickException"]


def main() -> None:
    """The `nla` entry point. Bad input (a usage mistake, a missing or undecodable file, a wrong value) is one
    `error:` line on stderr and status 2; Ctrl-C is status 130; anything else is a bug and keeps its traceback."""
    try:
        status = app(prog_name="nla", standalone_mode=False)  # the same name under `python -m nlakit`
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `nla` or `nla train` alone: the help (typer prints it)
            if e.format_message().strip():
                typer.echo(e.format_message())
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        _fail(e.format_message().rstrip(".") + (f"; see '{ctx.command_path} -h'" if ctx is not None else ""))
    except ClickException as e:  # e.g. a file that could not be opened
        _fail(e.format_message())
    except NlakitError as e:
        _fail(str(e))
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        _fail(f"{e.strerror}: {e.filename}" if e.filename else str(e))
    if isinstance(status, int) and status:  # typer turns Ctrl-C into exit code 130
        _fail("interrupted" if status == 130 else f"exit status {status}", status)
