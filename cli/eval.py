"""``pmpc eval asr|ppl|overrefusal``: measure a model (optionally under an approximation)."""
from __future__ import annotations

import json
import pathlib

import click

from pmpc.errors import UserError


def model_options(f):
    """Options every measuring command shares (model, device, generation, judge, data)."""
    opts = [
        click.option("--model", "-m", default="smollm2", show_default=True,
                     help="HF dir, .gguf, smollm2[-safe|-quada], tiny-random-<arch>"),
        click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:N"),
        click.option("--dtype", default="float32", show_default=True, help="float32 | bfloat16 | float16"),
        click.option("--data", default=None, help="data directory (default $PMPC_DATA or ../shared/data)"),
        click.option("--judge", default="minilm", show_default=True,
                     help="minilm (validated: results/judge-validation) | structure | gcg | paper | classifier:PATH; "
                          "the gcg keyword rule is always judged beside it"),
        click.option("--judge-template", default=None, help="classifier prompt file with {behavior} and {generation}"),
        click.option("--system", default="default", show_default=True,
                     help="default (model's own) | none | paper | any system prompt text"),
        click.option("--max-new-tokens", default=64, show_default=True, type=int),
        click.option("--batch-size", default=8, show_default=True, type=int),
        click.option("--sample/--greedy", default=False, show_default=True, help="sampling instead of greedy"),
        click.option("--temperature", default=1.0, show_default=True, type=float),
        click.option("--top-p", default=1.0, show_default=True, type=float),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--limit", default=None, type=int, help="first N prompts of each set"),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def ppl_options(f):
    for o in reversed([
        click.option("--window", default=1024, show_default=True, type=int, help="tokens per PPL window"),
        click.option("--max-windows", default=None, type=int, help="score only the first N windows"),
        click.option("--ppl-batch", default=1, show_default=True, type=int, help="windows per forward"),
    ]):
        f = o(f)
    return f


def settings(kw) -> "object":
    from eval.analysis.common import Settings
    from eval.generate import GenConfig

    if kw["batch_size"] < 1 or kw["max_new_tokens"] < 1:
        raise UserError("--batch-size and --max-new-tokens must be at least 1")
    return Settings(model=kw["model"], device=kw["device"], dtype=kw["dtype"], data=kw["data"], judge=kw["judge"],
                    judge_template=kw["judge_template"], batch_size=kw["batch_size"], seed=kw["seed"],
                    gen=GenConfig(system=kw["system"], max_new_tokens=kw["max_new_tokens"], do_sample=kw["sample"],
                                  temperature=kw["temperature"], top_p=kw["top_p"]),
                    window=kw.get("window", 1024), max_windows=kw.get("max_windows"),
                    ppl_batch=kw.get("ppl_batch", 1), progress=kw["progress"])


@click.group("eval")
def eval_group():
    """Safety and utility of a model, clean or under an approximation."""


def _run_sets(kw, sets, approx, out, json_path, what, secure: dict | None = None):
    """Evaluate each set. ``secure`` (``--secure --protocol P --parties 2``): generation runs under
    real 2-party MPC (:func:`pmpc.mpc.secure.secure_generate_fn`, one session per batch) instead of
    plaintext HF generation; the parties load the model themselves, this process only its tokenizer."""
    from eval import asr, judges, prompts

    s = settings(kw)
    from cli.paths import check_writable
    from pmpc import simulate

    check_writable(json_path)
    a = simulate.parse(approx)
    if secure and a.kind != "none":
        raise UserError("--approx applies to plaintext generation; the secure backend runs its protocol")
    # load every set and judge first: bad input fails before the model loads or anything generates
    loaded = [(spec, prompts.load(spec, data=s.data, limit=kw["limit"], fmt=kw.get("fmt"), category=kw.get("category")))
              for spec in sets]
    active_judges = judges.with_keyword(judges.get(s.judge, data=s.data, device=s.device, template=s.judge_template), s.data)
    generate_fn, cost_paths = None, {}
    if secure:
        from pmpc.mpc.secure import GenConfig as SecureGenConfig, secure_generate_fn

        model, codec = None, asr.load_codec(s.model)  # the client's view: tokenizer and config, never the weights
        gcfg = SecureGenConfig(model=s.model, protocol=secure["protocol"], max_new_tokens=s.gen.max_new_tokens,
                               temperature=s.gen.temperature if s.gen.do_sample else 0.0, top_p=s.gen.top_p,
                               threads=secure["threads"])
    else:
        model, codec = asr.load_model(s.model, s.device, s.dtype)
    calib = asr.default_calibration(codec, device=s.device) if a.needs_calibration else None
    results = {}
    for spec, set_prompts in loaded:
        name = spec if spec in prompts.NAMED else pathlib.Path(spec).stem
        config, tag = {"model": s.model, "prompts": spec}, ("generations" if a.kind == "none"
                                                             else f"generations-{_safe(str(a))}")
        if secure:
            tag = f"generations-secure-{secure['protocol']}"
            config["secure"] = {**secure, "max_new_tokens": s.gen.max_new_tokens}
            cost_paths[spec] = pathlib.Path(out) / name / f"cost-secure-{secure['protocol']}.jsonl"
            cost_paths[spec].parent.mkdir(parents=True, exist_ok=True)
            generate_fn = secure_generate_fn(gcfg, codec, system=s.gen.system, dealer=secure["dealer"],
                                               timeout_s=secure["timeout"], cost_path=cost_paths[spec])
        summ = asr.evaluate(model, codec, set_prompts, active_judges, pathlib.Path(out) / name, approx=a, gen=s.gen,
                            batch_size=s.batch_size, seed=s.seed, calib=calib, generate_fn=generate_fn,
                            config=config, progress=s.progress, tag=tag)
        if secure:
            summ["secure_cost"] = _secure_cost(cost_paths[spec])
        results[spec] = summ
        kind = prompts.kind_of(spec)
        r = summ["results"][s.judge]
        speed = f", {summ['s_per_100_prompts']} s/100 prompts" if "s_per_100_prompts" in summ else ""
        if what == "overrefusal" or kind == "benign":
            # a classifier judge tells no refusals: over-refusal then comes from the GCG keywords
            jn = s.judge if r["refusal"] is not None else "gcg"
            click.echo(f"{spec}: over-refusal {judges.fmt_rate(summ['results'][jn]['refusal'])} [{jn}], approx {a}{speed}")
        else:
            how = f"secure {secure['protocol']}" if secure else f"approx {a}"
            click.echo(f"{spec}: ASR {judges.fmt_rate(r['asr'])} [{s.judge}], {how}{speed}")
            if s.judge != "gcg":
                click.echo("  " + judges.keyword_line(asr.read_judged(summ), s.judge))
        if secure:
            c = summ["secure_cost"]
            click.echo(f"  cost (client): {c['batches']} sessions, prefill {c['prefill']['rounds']} rounds / "
                       f"{c['prefill']['bytes'] / 1e6:.0f} MB, decode {c['decode']['rounds']} rounds / "
                       f"{c['decode']['bytes'] / 1e6:.0f} MB (dealt beside them {c['decode']['dealer_bytes'] / 1e6:.0f} MB), "
                       f"{c['wall_seconds']:.0f} s")
    if json_path:
        pathlib.Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(json_path).write_text(json.dumps(results, indent=1))
    return results


def _secure_cost(path) -> dict:
    """Totals of a secure run's per-session cost records (client side)."""
    recs = [json.loads(ln) for ln in pathlib.Path(path).read_text().splitlines() if ln.strip()] if path.exists() else []
    tot = {"batches": len(recs), "prompts": sum(r["batch"] for r in recs),
           "wall_seconds": sum(r["wall_seconds"] for r in recs)}
    for ph in ("prefill", "decode"):
        tot[ph] = {k: sum(r[ph].get(k, 0) for r in recs) for k in ("rounds", "bytes", "seconds", "comm_seconds",
                                                                        "dealer_bytes")}
    tot["decode"]["tokens"] = sum(r["decode"].get("tokens", 0) for r in recs)
    return tot


def _safe(s):
    import re

    return re.sub(r"[^A-Za-z0-9.]+", "_", s).strip("_")[:80]


@eval_group.command("asr")
@model_options
@click.option("--prompts", "-p", "sets", multiple=True, default=("harmbench-test",), show_default=True,
              help="named set or file; repeat for several (see `pmpc eval sets`)")
@click.option("--format", "fmt", default=None, help="force the file format (advbench, harmbench, jbb, xstest, json, jsonl, txt, csv)")
@click.option("--category", default=None, help="HarmBench functional category (default standard; 'all') or a category filter")
@click.option("--approx", "-a", default=None, help="approximation spec, e.g. gauss:0.075@up, table2:bolt, protocol:bolt")
@click.option("--out", "-o", default="runs/eval", show_default=True, help="directory for generations and summaries")
@click.option("--json", "json_path", default=None, help="also write the summaries to this JSON file")
@click.option("--secure", is_flag=True, help="generate under real 2-party MPC (see --protocol) instead of plaintext")
@click.option("--protocol", default="bolt", show_default=True, help="with --secure: the non-linearities' protocol")
@click.option("--parties", default=2, show_default=True, type=int, help="with --secure: 2 (pmpc runs 2PC)")
@click.option("--dealer", type=click.Choice(["ttp", "local"]), default="ttp", show_default=True,
              help="with --secure: ttp (a separate dealer) | local (the client deals the triples: insecure against "
                   "the client, for online-phase measurements; see SECURITY.md)")
@click.option("--party-timeout", default=300.0, show_default=True, help="with --secure: seconds a party waits for the other")
@click.option("--threads", default=1, show_default=True, type=int, help="with --secure: torch threads per party")
def asr_cmd(sets, approx, out, json_path, secure, protocol, parties, dealer, party_timeout, threads, **kw):
    """Attack success rate on harmful prompt sets (over-refusal on benign ones)."""
    sec = None
    if secure:
        import protocols as PR

        if protocol not in PR.names():
            raise UserError(f"unknown protocol {protocol!r} (one of {', '.join(PR.names())})")
        if parties != 2:
            raise UserError(f"pmpc runs 2-party computation; got --parties {parties}")
        sec = {"protocol": protocol, "dealer": dealer, "timeout": party_timeout, "threads": threads}
    _run_sets(dict(kw), sets, approx, out, json_path, "asr", secure=sec)


@eval_group.command("overrefusal")
@model_options
@click.option("--prompts", "-p", "sets", multiple=True, default=("xstest-safe",), show_default=True)
@click.option("--format", "fmt", default=None)
@click.option("--category", default=None)
@click.option("--approx", "-a", default=None)
@click.option("--out", "-o", default="runs/eval", show_default=True)
@click.option("--json", "json_path", default=None)
def overrefusal_cmd(sets, approx, out, json_path, **kw):
    """Refusal rate on benign prompts (XSTest safe by default)."""
    _run_sets(dict(kw), sets, approx, out, json_path, "overrefusal")


@eval_group.command("ppl")
@click.option("--model", "-m", default="smollm2", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--data", default=None)
@click.option("--text", "text_file", default=None, help="score this text file instead of WikiText-2")
@ppl_options
@click.option("--approx", "-a", default=None)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", default=None)
@click.option("--progress/--no-progress", default=True)
def ppl_cmd(model, device, dtype, data, text_file, window, max_windows, ppl_batch, approx, seed, json_path, progress):
    """WikiText-2 perplexity (non-overlapping windows), approximation on or off."""
    from eval import asr
    from eval import ppl as PPL
    from pmpc import simulate

    m, codec = asr.load_model(model, device, dtype)
    a = simulate.parse(approx)
    calib = asr.default_calibration(codec, device=device) if a.needs_calibration else None
    res = PPL.wikitext_ppl(m, codec, data=data, text_file=text_file, window=window, max_windows=max_windows,
                           approx=a, seed=seed, batch_size=ppl_batch, progress=progress, calib=calib)
    res["model"] = model
    click.echo(f"PPL {res['ppl']:.3f} over {res['windows']} windows of {window} tokens, approx {res['approx']} "
               f"({res['seconds']} s)")
    if json_path:
        pathlib.Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(json_path).write_text(json.dumps(res, indent=1))


@eval_group.command("sets")
@click.option("--data", default=None)
def sets_cmd(data):
    """List the named prompt sets and whether their files are present."""
    from eval import prompts

    d = prompts.data_dir(data)
    for name, (rel, fmt, filt, kind) in prompts.NAMED.items():
        where = "built-in" if rel is None else (str(d / rel) if d else "(no data dir)")
        ok = rel is None or (d is not None and (d / rel).exists())
        click.echo(f"{name:18s} {kind:8s} {fmt:10s} {'ok ' if ok else '-- '} {where}")


@eval_group.command("agree")
@click.argument("set_dir")
@click.option("--protocol", required=True, help="the protocol of the encrypted run (bolt, bumblebee, ...)")
@click.option("--judge", default="gcg", show_default=True)
@click.option("--json", "json_path", default=None, help="also write the comparison as JSON")
def agree_cmd(set_dir, protocol, judge, json_path):
    """Encrypted ASR beside its plaintext twins in SET_DIR (OUT/SET of `eval asr`): ASR, identical
    texts, same verdicts, the prompts that differ, and the cost of each 2PC session."""
    from eval.analysis import agreement

    try:
        r = agreement.compare(set_dir, protocol, judge)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except KeyError as e:
        raise UserError(f"judge {judge!r} has no verdicts in {set_dir} ({e})") from None
    click.echo(agreement.to_markdown(r))
    if json_path:
        pathlib.Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(json_path).write_text(json.dumps(r, indent=1))


@click.command("approximations")
def approximations_cmd():
    """List approximation presets and the spec grammar."""
    from pmpc import simulate

    click.echo("kinds: " + ", ".join(simulate.ELEMENTARY + simulate.PRESET))
    click.echo("points: " + ", ".join(simulate.POINTS))
    click.echo("grammar: KIND[:ARGS][@POINTS][@LAYERS] ('+' joins components), e.g. gauss:0.05@up,down@0-3")
    for p in simulate.presets():
        a = simulate.parse(p)
        click.echo(f"  {p:24s} = {'+'.join(str(c) for c in a.components())}")


COMMANDS = [eval_group, approximations_cmd]
