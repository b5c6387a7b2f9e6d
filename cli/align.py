"""``pmpc align``: preference data, DPO / QuadA training, layer/MVA selection, adapter export."""
from __future__ import annotations

import json
import pathlib

import click

from pmpc.errors import UserError


@click.group("align")
def align():
    """Safety alignment: DPO and QuadA with LoRA (see pmpc/align)."""


@align.command("data")
@click.option("--model", "-m", default="smollm2", show_default=True, help="the base model whose answers are used")
@click.option("--gen", "gen_path", default=None, help="generations JSONL (cache; resumable) [runs/align/gen-<model>.jsonl]")
@click.option("--out", "out_path", default="runs/align/pairs.jsonl", show_default=True, help="pairs JSONL to write")
@click.option("--n-harmless", default=300, show_default=True, type=click.IntRange(0, None))
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1, 2048))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option("--formats", default="chat", show_default=True, help="prompt templates assigned to pairs in turn: chat, paper or chat,paper")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-generate", is_flag=True, help="only build pairs from the generations already cached")
@click.option("--keep-validation", is_flag=True,
              help="train on the validation prompts too (harmful-val = HarmBench val standard): the data the "
                   "committed adapters were made with; never for new models")
@click.option("--benign-train", default=0, show_default=True, type=click.IntRange(0, 100),
              help="this many JBB-benign prompts (seeded) join the harmless ones; the rest validate over-refusal")
@click.option("--policy", default=None,
              help="make the pairs on-policy for this model (e.g. smollm2-safe, to align it further): its own "
                   "answers take the side they fall on (pmpc/align/data.py)")
@click.option("--policy-gen", default=None, help="the policy's generations JSONL [runs/align/gen-<policy>.jsonl]")
@click.option("--mine-harmless", default=0, show_default=True, type=click.IntRange(0, None),
              help="with --policy: screen this many further harmless-train prompts (its first 16 tokens) and "
                   "add the ones the policy refuses (hard negatives: its over-refusals)")
@click.option("--contrast", default=0, show_default=True, type=click.IntRange(0, None),
              help="this many of pmpc's contrast prompts (harmless requests worded like harmful ones: "
                   "pmpc/align/contrast.py) join the harmless ones, decontaminated against the evaluation sets")
@click.option("--twins", default=0, show_default=True, type=click.IntRange(0, None),
              help="this many of their harmful twins (the same trigger words, the intent to harm) join the "
                   "harmful ones, decontaminated likewise (stricter)")
@click.option("--judge", "judge_name", default="minilm", show_default=True,
              help="the judge that tells refusals when pairs are built (eval/judges.py; gcg: the keyword rule)")
def data_cmd(model, gen_path, out_path, n_harmless, max_new_tokens, batch_size, formats, seed, device, no_generate,
             keep_validation, benign_train, policy, policy_gen, mine_harmless, contrast, twins, judge_name):
    """Generate the base model's answers (cached, resumable) and build preference pairs."""
    from eval import judges
    from eval import splits
    from pmpc.align import data

    if mine_harmless and not policy:
        raise UserError("--mine-harmless screens the policy's refusals: give --policy")
    judge = judges.get(judge_name)
    gen_path = pathlib.Path(gen_path) if gen_path else data.default_gen_path(model)
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    ps = splits.training_prompts(n_harmless, seed, keep_validation=keep_validation, benign_train=benign_train,
                                 screen=mine_harmless, contrast=contrast, twins=twins)
    policy_path = (pathlib.Path(policy_gen) if policy_gen else data.default_gen_path(policy)) if policy else None
    mined = None
    if ps.screen:   # hard negatives: the further harmless prompts the policy refuses
        if not no_generate:
            from pmpc.models import load_hf

            m, tok = load_hf(policy, device=device)
            mined = data.generate_answers(m, tok, [(p, "harmless", "harmless_prompts/train") for p in ps.screen],
                                          policy_path, max_new_tokens=data.SCREEN_TOKENS, batch_size=batch_size,
                                          model_name=policy, device=device)
            del m
        got = data.answers(policy_path, data.SCREEN_TOKENS)
        seen = [got[("harmless", x)] for x in ps.screen if ("harmless", x) in got]
        refused = data.refused_prompts(policy_path, ps.screen, judges.refusal_fn(judge, [r["prompt"] for r in seen],
                                                                          [r["response"] for r in seen]))
        mined = dict(mined or {}, screened=len(ps.screen), refused=len(refused))
        ps.harmless += [(p, "harmless_prompts/train:mined") for p in refused]
    prompts = [(p, "harmful", s) for p, s in ps.harmful] + [(p, "harmless", s) for p, s in ps.harmless]
    click.echo(f"prompts: {len(ps.harmful)} harmful, {len(ps.harmless)} harmless "
               f"(removed: {ps.removed} held-out evaluation, {ps.removed_validation} validation prompts"
               + (f"; {ps.removed_contrast} contrast prompts near an evaluation one" if contrast else "")
               + (f"; {ps.removed_twins} harmful twins near an evaluation one" if twins else "") + ")", err=True)
    stats = {}
    if not no_generate:
        import torch

        from pmpc.models import load_hf

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {device} requested but CUDA is not available")
        for name, path in ((model, gen_path),) + (((policy, policy_path),) if policy else ()):
            m, tok = load_hf(name, device=device)
            stats[name] = data.generate_answers(m, tok, prompts, path, max_new_tokens=max_new_tokens,
                                                batch_size=batch_size, model_name=name, device=device)
            del m
    wanted = {(k, p) for p, k, _ in prompts}
    rows = [r for key, r in data.answers(gen_path, max_new_tokens).items() if key in wanted]
    if not rows:
        raise UserError(f"{gen_path}: no generations for these prompts (run without --no-generate)")
    own = None
    if policy:
        own = {key: r for key, r in data.answers(policy_path, max_new_tokens).items() if key in wanted}
        if len(own) < len(rows):
            raise UserError(f"{policy_path}: {len(rows) - len(own)} prompt(s) without {policy}'s answer "
                            "(run without --no-generate)")
    judged = rows + list((own or {}).values())
    is_refusal = judges.refusal_fn(judge, [r["prompt"] for r in judged], [r["response"] for r in judged])
    pairs, pstats = data.build_pairs(rows, is_refusal, seed=seed, formats=fmts, policy_rows=own)
    data.write_pairs(pairs, out_path)
    res = {"generation": stats, "mined": mined,
           "contrast": _written(contrast, ps.removed_contrast, ps.harmless, "pmpc-contrast/"),
           "twins": _written(twins, ps.removed_twins, ps.harmful, "pmpc-twin/"),
           "pairs": pstats, "judge": judge.describe(), "missing_generations": len(prompts) - len(rows),
           "gen_file": str(gen_path), "policy_gen_file": str(policy_path) if policy else None,
           "pairs_file": out_path, "pairs_sha256": data.file_sha256(out_path)}
    click.echo(json.dumps(res, indent=2))


def _written(asked, removed, prompts, prefix):
    """What became of pmpc's own prompts (contrast or twins; ``prefix`` marks their source), or None."""
    return {"asked": asked, "removed_near_evaluation": removed,
            "joined": sum(s.startswith(prefix) for _, s in prompts)} if asked else None


def _train_options(f):
    opts = [
        click.option("--pairs", required=True, help="pairs JSONL from `pmpc align data`"),
        click.option("--out", required=True, help="run directory (checkpoints, adapters, train.json)"),
        click.option("--model", "-m", default="smollm2", show_default=True),
        click.option("--init-adapter", default=None, help="LoRA adapter merged first; the reference is the result"),
        click.option("--beta", default=0.1, show_default=True),
        click.option("--sft", default=0.0, show_default=True, help="+ this x per-token NLL of the chosen responses (DPO+NLL); 0 = pure DPO"),
        click.option("--kl-base", default=0.0, show_default=True,
                     help="+ this x per-token KL(raw base || policy) on the harmless pairs' chosen sequences: "
                          "keeps what should not change at the base model (perplexity, helpfulness)"),
        click.option("--lr", default=2e-4, show_default=True),
        click.option("--epochs", default=2.0, show_default=True),
        click.option("--max-steps", default=None, type=int, help="overrides --epochs"),
        click.option("--batch-size", default=16, show_default=True, help="pairs per optimizer step"),
        click.option("--micro-batch", default=None, type=int, help="pairs per forward (gradient accumulation)"),
        click.option("--warmup", default=0.05, show_default=True),
        click.option("--lora-r", default=8, show_default=True),
        click.option("--lora-alpha", default=16, show_default=True),
        click.option("--max-response-tokens", default=128, show_default=True),
        click.option("--limit-pairs", default=None, type=int),
        click.option("--seed", default=0, show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--ckpt-every", default=25, show_default=True),
        click.option("--keep-every", "keep_epochs", default=0.0, show_default=True,
                     help="also save the adapter every this many epochs (OUT/epochs/ep<e>/; 0: never), "
                          "the candidates to select on validation data"),
        click.option("--resume", is_flag=True, help="continue the checkpoint in --out"),
        click.option("--quiet", is_flag=True, help="no progress bar"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _run(kw, method, approx=None, tau=0, lam=0.0, pool="mean"):
    from pmpc.align.train import TrainConfig, train

    resume = kw.pop("resume")
    quiet = kw.pop("quiet")
    cfg = TrainConfig(method=method, approx=approx, tau=tau, lam=lam, pool=pool, progress=not quiet, **kw)
    summary = train(cfg, resume=resume, log=lambda s: click.echo(s, err=True))
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


@align.command("dpo")
@_train_options
def dpo_cmd(**kw):
    """Plain DPO (clean policy vs clean reference), LoRA."""
    _run(kw, "dpo")


@align.command("quada")
@_train_options
@click.option("--noise", default=None, help="training approximation (simulate spec, e.g. gauss:0.1@up); 'none' for the no-noise ablation")
@click.option("--tau", default=0, show_default=True, help="noise in decoder layers [0, tau)")
@click.option("--lam", default="auto", show_default=True,
              help="weight of the layer-1 clustering term, or 'auto[:R]': |grad cos| x lam = R x |grad DPO| "
                   "at the start (R = 1 for plain 'auto')")
@click.option("--pool", type=click.Choice(["mean", "last"]), default="mean", show_default=True,
              help="layer-1 pooling: mean over the instruction tokens, or the last one")
def quada_cmd(noise, tau, lam, pool, **kw):
    """QuadA: DPO of the MVA-perturbed policy (layers < tau) vs the clean reference, minus
    lambda x mean pairwise cosine of harmful prompts' layer-1 outputs."""
    if noise is None:
        raise UserError("quada needs --noise (the MVA, e.g. gauss:0.1@up) or --noise none for the ablation")
    _run(kw, "quada", approx=None if noise.strip() == "none" else noise, tau=tau, lam=lam, pool=pool)


@align.command("select")
@click.option("--model", "-m", default="smollm2-safe", show_default=True)
@click.option("--adapter", default=None, help="LoRA adapter merged into --model first (e.g. a fresh run's adapter/)")
@click.option("--prompts", default="harmful-val", show_default=True, help="harmful selection set (neither training nor evaluation)")
@click.option("--with-dev", is_flag=True, help="pool --prompts with harmful-test's dev part (100 prompts no scored set holds)")
@click.option("--point", default="up", show_default=True, help="where the Gaussian noise goes")
@click.option("--scales", default="auto", show_default=True, help="'auto' (x activation RMS grid) or comma-separated stds")
@click.option("--ppl-bound", default=2.0, show_default=True, help="MVA: PPL <= bound x clean PPL")
@click.option("--window", default=3, show_default=True, help="layers per window in the layer sweep")
@click.option("--frac", default=0.5, show_default=True, help="sensitive: window gain >= frac x the largest gain")
@click.option("--judge", default="minilm", show_default=True, help="minilm (validated) | structure | gcg | paper")
@click.option("--max-new-tokens", default=48, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-windows", default=8, show_default=True, help="WikiText-2 windows for the PPL bound")
@click.option("--limit", default=None, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", default="runs/align/select", show_default=True)
def select_cmd(model, adapter, prompts, with_dev, point, scales, ppl_bound, window, frac, judge, max_new_tokens, batch_size,
               max_windows, limit, device, out_dir):
    """Find the MVA (noise_sweep) and tau (layer_sweep) of a model with the evaluation harness."""
    from eval.studies import select

    if scales != "auto":
        try:
            scales = [float(x) for x in scales.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--scales: 'auto' or numbers, not {scales!r}") from None
    res = select.run(model=model, adapter=adapter, prompts=prompts, point=point, scales=scales, ppl_bound=ppl_bound,
                     window=window, frac=frac, judge=judge, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     max_windows=max_windows, limit=limit, device=device, out=out_dir, with_dev=with_dev)
    click.echo(json.dumps({k: res[k] for k in ("mva", "mva_spec", "tau", "n_prompts", "sensitive_layers", "asr_clean",
                                               "asr_mva_all", "ppl_clean", "ppl_mva")}, indent=2, default=str))


@align.command("validate")
@click.argument("run_dir")
@click.option("--model", "-m", default="smollm2", show_default=True, help="the raw base the snapshots adapt")
@click.option("--benign-train", default=0, show_default=True, type=click.IntRange(0, 90),
              help="as the pairs were built: those JBB benign prompts trained, only the rest validate")
@click.option("--val-windows", default=8, show_default=True, help="WikiText-2 windows from the end of the file")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "-o", required=True, help="output directory (cached generations; resumable)")
def validate_cmd(run_dir, model, benign_train, val_windows, max_new_tokens, batch_size, device, out):
    """Choose among a training run's snapshots (RUN_DIR/epochs/ep*) on validation data only, as the
    pipeline chooses smollm2-safe's epoch: ASR on harmful-val and harmful-test's dev part, refusal
    of the untrained JBB benign prompts, PPL of the last WikiText-2 windows; writes OUT/validate.json."""
    from eval.studies import pipeline

    plan = pipeline.Plan(model=model, out=out, device=device, benign_train=benign_train, val_windows=val_windows,
                         eval_tokens=max_new_tokens, eval_batch=batch_size)
    res = pipeline.Runner(plan).validate_epochs(run_dir)
    pathlib.Path(out, "validate.json").write_text(json.dumps(res, indent=1, default=str))
    for r in res["epochs"]:
        parts = ", ".join(f"{k} {v['k']}/{v['n']}" for k, v in r["asr_val_parts"].items())
        click.echo(f"ep{r['epoch']:g}: ASR {r['asr_val']['rate']:.3f} ({parts}), benign refusal "
                   f"{r['overrefusal_val']['rate']:.3f}, PPL x{r['ppl_ratio']:.3f}{'  meets' if r['meets'] else ''}")
    click.echo(f"chosen: ep{res['chosen_epoch']:g} ({res['adapter']})")


@align.command("targets")
@click.option("--model", "-m", default="smollm2-safe", show_default=True)
@click.option("--adapter", default=None, help="LoRA adapter merged into --model first (a run's adapter/)")
@click.option("--base", default="smollm2", show_default=True, help="the model whose PPL the target is relative to")
@click.option("--n-test", default=None, type=int,
              help="a seeded subset of harmful-test (default: all but its selection dev part, 429 of 529 distinct)")
@click.option("--ppl-windows", default=20, show_default=True, help="first WikiText-2 windows of 1024 tokens")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "-o", required=True, help="output directory (cached generations; resumable)")
@click.option("--judge", default="minilm", show_default=True, help="minilm (validated) | structure | gcg | paper")
def targets_cmd(model, adapter, base, n_test, ppl_windows, max_new_tokens, batch_size, device, out, judge):
    """The alignment targets for one model: held-out ASR <= 5%, XSTest over-refusal <= 20%,
    WikiText-2 PPL <= 1.10 x base (the gcg keyword verdicts are kept beside); writes OUT/targets.json."""
    from eval.studies import pipeline

    if adapter:
        from pmpc.align.adapters import read_adapter

        read_adapter(adapter)
    res = pipeline.evaluate_targets(model, out, adapter, base=base, device=device, n_test=n_test,
                                    ppl_windows=ppl_windows, eval_tokens=max_new_tokens, eval_batch=batch_size,
                                    judge=judge)
    click.echo(json.dumps(res, indent=1, default=str))


def _grid_rows(rows) -> dict[str, str]:
    """--row ROW=MODEL options -> {row: model}."""
    pairs = dict(r.split("=", 1) for r in rows if "=" in r)
    if len(pairs) != len(rows):
        raise UserError("--row takes ROW=MODEL, e.g. safe=smollm2-safe")
    return pairs


@align.command("fill-grid")
@click.argument("results")
@click.option("--row", "rows", multiple=True, required=True,
              help="ROW=MODEL: a grid row of that run and the pmpc model that is it (safe=smollm2-safe); "
                   "ROW=MODEL+ADAPTER_DIR: a LoRA trained here, merged onto MODEL (give it a new row name)")
@click.option("--column", "columns", multiple=True, help="grid columns to consider (default: all of the run's)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "-o", required=True, help="output directory (resumable)")
def fill_grid_cmd(results, rows, columns, device, out):
    """Compute the grid cells a pipeline run (RESULTS: its results.json) skipped for time, for
    the rows whose models exist here; writes OUT/results.json and OUT/results.md."""
    from eval.studies import pipeline

    pairs = _grid_rows(rows)
    if not pathlib.Path(results).is_file():
        raise UserError(f"no results file at {results}")
    res = pipeline.fill_grid(results, pairs, out, device=device, columns=list(columns) or None)
    click.echo(pipeline.report(res))


@align.command("grid")
@click.option("--row", "rows", multiple=True, required=True,
              help="ROW=MODEL (a pmpc model, e.g. safe=smollm2-safe-r11) or ROW=MODEL+ADAPTER_DIR (a LoRA merged onto MODEL)")
@click.option("--mva", required=True, help="the MVA (simulate spec from `pmpc align select`, e.g. gauss:0.025@up)")
@click.option("--column", "columns", multiple=True,
              help="columns (default: clean, the MVA, table2:{bolt,iron,bumblebee,nexus}, protocol:{iron,bolt,bumblebee,nexus})")
@click.option("--n-grid", default=100, show_default=True, help="held-out harmful prompts per cell (the pipeline's seeded mix)")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--ppl-windows", default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "-o", required=True, help="output directory (resumable, cell by cell)")
def grid_cmd(rows, mva, columns, n_grid, max_new_tokens, batch_size, ppl_windows, device, out):
    """The pipeline's evaluation grid for models trained elsewhere: ASR of each row under each
    column (held-out), PPL clean and under the MVA, XSTest over-refusal."""
    from eval.studies import pipeline

    pairs = _grid_rows(rows)
    if columns and (columns[0] != "clean" or columns[1:2] != (mva,)):
        raise UserError("--column: the first two columns are clean and the MVA")
    res = pipeline.new_grid(out, pairs, mva, list(columns) or None, device=device, n_grid=n_grid,
                            eval_tokens=max_new_tokens, eval_batch=batch_size, ppl_windows=ppl_windows)
    click.echo(pipeline.report(res))


@align.command("export")
@click.argument("adapter_dir")
@click.argument("name")
@click.option("--to", "dest", default=None, help="destination [pmpc/adapters/NAME]")
@click.option("--card", default=None, help="JSON with model-card fields (summary, data, command, training, metrics, notes)")
@click.option("--fp32", is_flag=True, help="keep fp32 tensors (default: fp16, half the size)")
def export_cmd(adapter_dir, name, dest, card, fp32):
    """Copy a trained adapter (fp16) to pmpc/adapters/NAME with a model card README.md."""
    import torch

    from pmpc.align import adapters as adp
    from pmpc.models import ADAPTER_DIR

    dest = pathlib.Path(dest) if dest else ADAPTER_DIR / name
    adp.export(adapter_dir, dest, torch.float32 if fp32 else torch.float16)
    info = {}
    if card:
        p = pathlib.Path(card)
        if not p.exists():
            raise UserError(f"card file not found: {p}")
        try:
            info = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: not JSON ({e})") from None
    (dest / "README.md").write_text(adp.model_card(name, info))
    size = (dest / adp.WEIGHTS).stat().st_size
    click.echo(json.dumps({"exported": str(dest), "bytes": size}))


COMMANDS = [align]
