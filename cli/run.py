"""``pmpc run`` (both parties locally) and ``pmpc party`` (one party, e.g. one per host)."""
from __future__ import annotations

import json
import os
import sys
import time

import click

# torch's C++ side prints every distributed error with a stack dump on stderr; the Python error
# already carries the message (one line from pmpc). Must be set before torch loads; override to debug.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")

from pmpc.errors import UserError

_common = [
    click.option("--protocol", "-p", default="bolt", show_default=True, help="non-linear protocol (pmpc protocols)"),
    click.option("--model", "-m", default="smollm2", show_default=True,
                 help="smollm2 | smollm2-safe | HF dir | .gguf | tiny-random-<arch>"),
    click.option("--weights", type=click.Choice(["public", "private"]), default="public", show_default=True,
                 help="public: open weights, linear layers local; private: the server secret-shares them"),
    click.option("--max-new-tokens", "-n", default=8, show_default=True, type=click.IntRange(1, 4096)),
    click.option("--temperature", default=0.0, show_default=True, help="0 = greedy"),
    click.option("--top-p", default=1.0, show_default=True),
    click.option("--seed", default=0, show_default=True),
    click.option("--timeout", "timeout_s", default=120.0, show_default=True,
                 help="seconds a party waits for its peer before it gives up"),
    click.option("--dealer", type=click.Choice(["ttp", "local"]), default="ttp", show_default=True,
                 help="ttp: a separate dealer process deals the triples (semi-honest, non-colluding); "
                      "local: party 0 deals them — INSECURE against the client, for online-phase measurements"),
    click.option("--cost-only", is_flag=True,
                 help="allow --weights private with --dealer local: the client then learns the weights, so "
                      "such a run only measures cost"),
    click.option("--max-prompt-tokens", default=2048, show_default=True, type=click.IntRange(1),
                 help="server: refuse an announced prompt longer than this"),
    click.option("--max-batch", default=64, show_default=True, type=click.IntRange(1),
                 help="server: refuse an announced batch larger than this"),
    click.option("--allow-pickle", is_flag=True, help="accept pickle (.bin) checkpoints, which can run code"),
    click.option("--preprocess/--no-preprocess", default=False, show_default=True,
                 help="deal every tuple of the query before it runs (offline/online split: the online phase "
                      "is timed alone). Each party keeps the query's tuples on its disk, encrypted, until used: GBs "
                      "for a 30-layer model (PMPC_SPOOL_DIR: where; default the temporary directory)"),
    click.option("--threads", default=1, show_default=True, help="torch threads per party"),
]


def common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


COST_ONLY = ("cost-only run: with --dealer local the client deals every triple, so it can open the "
             "private weights (W - B with B known); this run measures cost and protects nothing")


def _dealer_check(dealer: str, weights: str, cost_only: bool) -> str | None:
    """Refuse ``--weights private`` with the ``local`` dealer unless asked for a cost-only run;
    the warning to print (and record) when it is."""
    if dealer == "local" and weights == "private":
        if not cost_only:
            raise UserError("--weights private with --dealer local protects nothing (the client deals every triple "
                            "and so learns the weights): use --dealer ttp, or pass --cost-only to measure cost")
        return COST_ONLY
    return None


def _encode(tok, prompt: str, raw: bool, max_positions: int):
    import torch

    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("--prompt is not valid UTF-8 text") from None
    if not prompt.strip():
        raise UserError("empty prompt")
    if tok is None:
        raise UserError("this model has no tokenizer: pass --ids 1,2,3 instead of --prompt")
    if not raw and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
    else:
        text = prompt
    ids = tok(text, return_tensors="pt", add_special_tokens=raw or not getattr(tok, "chat_template", None))["input_ids"]
    if ids.shape[1] >= max_positions:
        raise UserError(f"prompt is {ids.shape[1]} tokens; the model's context is {max_positions}")
    return ids, torch.ones_like(ids)


def _config(protocol, model, weights, max_new_tokens, temperature, top_p, seed, allow_pickle, threads, preprocess,
            max_prompt_tokens=2048, max_batch=64):
    import protocols
    from pmpc.mpc.secure import GenConfig

    protocols.get(protocol)  # unknown protocol: fail now, before any process starts
    if protocol == "plain":
        raise UserError("plain is the plaintext reference, not an MPC protocol")
    return GenConfig(model=model, protocol=protocol, weights=weights, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, seed=seed, allow_pickle=allow_pickle, threads=threads,
                     preprocess=preprocess, max_prompt_tokens=max_prompt_tokens, max_batch=max_batch)


def _inputs(model, prompt, ids, raw, allow_pickle, weights_file: bool = True):
    """(spec, tokenizer, ids, mask). ``weights_file=False`` (the client of ``pmpc party``): the
    config and the tokenizer only, the spec with zero weights — the weight file is never read."""
    import torch

    from pmpc import models

    if weights_file:
        hf, tok = models.load_hf(model, allow_pickle=allow_pickle)
        spec = models.spec_from_hf(hf, model)
    else:
        spec, tok = models.load_shapes(model, allow_pickle=allow_pickle), models.load_tokenizer(model)
    if ids:
        try:
            t = torch.tensor([[int(v) for v in ids.split(",")]])
        except ValueError:
            raise UserError(f"--ids must be comma-separated integers, got {ids!r}") from None
        if t.max() >= spec.vocab or t.min() < 0:
            raise UserError(f"token id out of range [0, {spec.vocab})")
        return spec, tok, t, torch.ones_like(t)
    return (spec, tok) + _encode(tok, prompt, raw, spec.max_positions)


@click.command("run")
@common
@click.option("--parties", default=2, show_default=True, help="number of computing parties (2)")
@click.option("--prompt", default="What is the capital of France?", show_default=True)
@click.option("--ids", default=None, help="comma-separated token ids instead of --prompt")
@click.option("--raw", is_flag=True, help="do not apply the chat template")
@click.option("--json", "json_path", help="write everything here (checked before the run)")
def run(protocol, model, weights, max_new_tokens, temperature, top_p, seed, timeout_s, dealer, cost_only,
        max_prompt_tokens, max_batch, allow_pickle, preprocess, threads, parties, prompt, ids, raw, json_path):
    """Generate under 2-party MPC and compare with plaintext. The answer is printed token by
    token as the client decodes it (prefill progress by layer on stderr), then the cost summary.
    This launcher plays both hosts: it reads the weights for the comparison; the client party
    process never does in private mode."""
    from cli.paths import check_writable
    from pmpc.mpc import cost, secure

    if parties != 2:
        raise UserError(f"pmpc runs 2-party computation; got --parties {parties}")
    warning = _dealer_check(dealer, weights, cost_only)
    check_writable(json_path)
    cfg = _config(protocol, model, weights, max_new_tokens, temperature, top_p, seed, allow_pickle, threads,
                  preprocess, max_prompt_tokens, max_batch)
    spec, tok, ids_t, attn = _inputs(model, prompt, ids, raw, allow_pickle)
    secure.check_input(cfg, spec, secure.ClientInput(ids_t, attn))  # before the banner: one line
    click.echo(f"[pmpc] {model} ({spec.n_layers} layers, {spec.n_params() / 1e6:.1f}M params), protocol {protocol}, "
               f"weights {weights}, dealer {dealer}: prompt {ids_t.shape[1]} tokens, {max_new_tokens} new", err=True)
    if warning:
        click.echo(f"[pmpc] WARNING: {warning}", err=True)
    t0 = time.perf_counter()
    # each token is printed here as the client process relays it (stdout), the prefill's layers on stderr
    res = secure.run_generation(cfg, secure.ClientInput(ids_t, attn, watch=secure.Watch(tok)), timeout_s=timeout_s,
                                dealer=dealer, cost_only=cost_only)
    wall = time.perf_counter() - t0
    client, server = res
    fid = secure.fidelity(spec, ids_t, attn, client["tokens"], client["logits"])
    text = tok.decode(client["tokens"][0], skip_special_tokens=True) if tok is not None else str(client["tokens"][0])
    report = secure.summary(cfg, spec, dealer, client, server, fid, wall)
    if warning:
        report["warning"] = warning
    click.echo("\n")
    click.echo(secure.format_summary(report))
    if warning:
        click.echo(f"WARNING: {warning}")
    if json_path:
        report["text"] = text
        report["prompt_tokens"] = int(ids_t.shape[1])
        cost.dump(json_path, report)


@click.command("party")
@common
@click.option("--rank", type=click.IntRange(0, 2), required=True, help="0 = client, 1 = server, 2 = dealer (ttp)")
@click.option("--rendezvous", required=True, help="tcp://HOST:PORT of rank 0's listener, same at every party")
@click.option("--prompt", default=None, help="client only: the prompt")
@click.option("--ids", default=None, help="client only: comma-separated token ids")
@click.option("--raw", is_flag=True)
@click.option("--json", "json_path", help="write the result here (checked before the run)")
@click.option("--psk-file", envvar="PMPC_PSK_FILE", default=None,
              help="pre-shared key (16+ random bytes, the same file at every party) that authenticates the "
                   "start-up key exchange; make one with `head -c 32 /dev/urandom > psk` [env PMPC_PSK_FILE]")
def party(protocol, model, weights, max_new_tokens, temperature, top_p, seed, timeout_s, dealer, cost_only,
          max_prompt_tokens, max_batch, allow_pickle, preprocess, threads, rank, rendezvous, prompt, ids, raw, json_path,
          psk_file):
    """Run ONE party of a secure generation (start one per host with the same options). With
    --weights private the client (rank 0) needs the model's config and tokenizer only."""
    from cli.paths import check_writable
    from pmpc.mpc import handshake, parties, secure

    if psk_file is None:
        raise UserError(f"no pre-shared key: pass --psk-file FILE ({handshake.MAKE_PSK})")
    psk = handshake.read_psk(psk_file)

    warning = _dealer_check(dealer, weights, cost_only)
    check_writable(json_path)
    cfg = _config(protocol, model, weights, max_new_tokens, temperature, top_p, seed, allow_pickle, threads,
                  preprocess, max_prompt_tokens, max_batch)
    if rank == 2 and dealer != "ttp":
        raise UserError("rank 2 is the dealer: pass --dealer ttp at every party")
    if warning:
        click.echo(f"[pmpc] WARNING: {warning}", err=True)
    inp, spec, tok = None, None, None
    if rank == 0:
        if not (prompt or ids):
            raise UserError("the client (rank 0) needs --prompt or --ids")
        spec, tok, ids_t, attn = _inputs(model, prompt or "", ids, raw, allow_pickle, weights_file=False)
        inp = secure.ClientInput(ids_t, attn, watch=secure.Watch(tok))
        secure.check_input(cfg, spec, inp)  # before joining: the peers are not kept waiting
    elif prompt or ids:
        raise UserError("only the client (rank 0) takes a prompt")
    import functools

    out = parties.run_party(functools.partial(secure.generate_party, cfg), rank, 2, rendezvous, timeout_s,
                            dealer, threads, inp, has_input=True, psk=psk)
    if rank == 0:  # the text went out token by token
        text = tok.decode(out["tokens"][0], skip_special_tokens=True) if tok is not None else str(out["tokens"][0])
        click.echo("")
        out = {k: v for k, v in out.items() if k != "logits"}
        out["text"] = text
    elif out is not None:
        click.echo(json.dumps({k: v for k, v in out.items() if k == "phases"}, default=str)[:2000], err=True)
    if warning and out is not None:
        out["warning"] = warning
    if json_path and out is not None:
        from pmpc.mpc import cost

        cost.dump(json_path, out)
    sys.stdout.flush()


COMMANDS = [run, party]
