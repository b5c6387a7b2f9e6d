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
    click.option("--dealer", type=click.Choice(["local", "ttp"]), default="local", show_default=True,
                 help="local: party 0 deals the triples (insecure against party 0; online-phase numbers); "
                      "ttp: a separate dealer process (semi-honest, non-colluding)"),
    click.option("--allow-pickle", is_flag=True, help="accept pickle (.bin) checkpoints, which can run code"),
    click.option("--preprocess/--no-preprocess", default=False, show_default=True,
                 help="deal every tuple of the query before it runs (offline/online split: the online phase "
                      "is timed alone). Holds all of the query's tuples in memory: GBs for a 30-layer model"),
    click.option("--threads", default=1, show_default=True, help="torch threads per party"),
]


def common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


def _encode(tok, prompt: str, raw: bool, max_positions: int):
    import torch

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


def _config(protocol, model, weights, max_new_tokens, temperature, top_p, seed, allow_pickle, threads, preprocess):
    import protocols
    from pmpc.secure import GenConfig

    protocols.get(protocol)  # unknown protocol: fail now, before any process starts
    if protocol == "plain":
        raise UserError("plain is the plaintext reference, not an MPC protocol")
    return GenConfig(model=model, protocol=protocol, weights=weights, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, seed=seed, allow_pickle=allow_pickle, threads=threads,
                     preprocess=preprocess)


def _inputs(model, prompt, ids, raw, allow_pickle):
    import torch

    from pmpc import models

    hf, tok = models.load_hf(model, allow_pickle=allow_pickle)
    spec = models.spec_from_hf(hf, model)
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write everything here")
def run(protocol, model, weights, max_new_tokens, temperature, top_p, seed, timeout_s, dealer, allow_pickle,
        preprocess, threads, parties, prompt, ids, raw, json_path):
    """Generate under 2-party MPC and compare with plaintext. The answer is printed token by
    token as the client decodes it (prefill progress by layer on stderr), then the cost summary."""
    from pmpc import cost, secure

    if parties != 2:
        raise UserError(f"pmpc runs 2-party computation; got --parties {parties}")
    cfg = _config(protocol, model, weights, max_new_tokens, temperature, top_p, seed, allow_pickle, threads,
                  preprocess)
    spec, tok, ids_t, attn = _inputs(model, prompt, ids, raw, allow_pickle)
    secure.check_input(cfg, spec, secure.ClientInput(ids_t, attn))  # before the banner: one line
    click.echo(f"[pmpc] {model} ({spec.n_layers} layers, {spec.n_params() / 1e6:.1f}M params), protocol {protocol}, "
               f"weights {weights}, dealer {dealer}: prompt {ids_t.shape[1]} tokens, {max_new_tokens} new", err=True)
    t0 = time.perf_counter()
    # the client process prints each token as it is chosen (stdout), the prefill's layers on stderr
    res = secure.run_generation(cfg, secure.ClientInput(ids_t, attn, watch=secure.Watch(tok)), timeout_s=timeout_s,
                                dealer=dealer)
    wall = time.perf_counter() - t0
    client, server = res
    fid = secure.fidelity(spec, ids_t, attn, client["tokens"], client["logits"])
    text = tok.decode(client["tokens"][0], skip_special_tokens=True) if tok is not None else str(client["tokens"][0])
    report = secure.summary(cfg, spec, dealer, client, server, fid, wall)
    click.echo("\n")
    click.echo(secure.format_summary(report))
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@click.option("--psk-file", envvar="PMPC_PSK_FILE", default=None,
              help="pre-shared key (16+ random bytes, the same file at every party) that authenticates the "
                   "start-up key exchange; make one with `head -c 32 /dev/urandom > psk` [env PMPC_PSK_FILE]")
def party(protocol, model, weights, max_new_tokens, temperature, top_p, seed, timeout_s, dealer, allow_pickle,
          preprocess, threads, rank, rendezvous, prompt, ids, raw, json_path, psk_file):
    """Run ONE party of a secure generation (start one per host with the same options)."""
    from pmpc import handshake, parties, secure

    if psk_file is None:
        raise UserError(f"no pre-shared key: pass --psk-file FILE ({handshake.MAKE_PSK})")
    psk = handshake.read_psk(psk_file)

    cfg = _config(protocol, model, weights, max_new_tokens, temperature, top_p, seed, allow_pickle, threads,
                  preprocess)
    if rank == 2 and dealer != "ttp":
        raise UserError("rank 2 is the dealer: pass --dealer ttp at every party")
    inp, spec, tok = None, None, None
    if rank == 0:
        if not (prompt or ids):
            raise UserError("the client (rank 0) needs --prompt or --ids")
        spec, tok, ids_t, attn = _inputs(model, prompt or "", ids, raw, allow_pickle)
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
    if json_path and out is not None:
        from pmpc import cost

        cost.dump(json_path, out)
    sys.stdout.flush()


COMMANDS = [run, party]
