"""``pmpc bench`` (models x protocols: cost, speedup over exact, fidelity) and
``pmpc bench errors`` (measured error distributions at W_up / W_down, fitted, as noise presets)."""
from __future__ import annotations

import click


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group("bench", invoke_without_command=True)
@click.option("--models", "-m", default=None,
              help="comma-separated; default tiny-random-llama,stories260K. Also: smollm2, bert-base-random, "
                   "gpt2-random, tiny-random-<arch>, an HF dir, a .gguf")
@click.option("--protocols", "-p", "protos", default=None, help="comma-separated; default: all but plain")
@click.option("--tokens", "-t", default=16, show_default=True, type=int, help="tokens per WikiText-2 window")
@click.option("--windows", "-w", default=1, show_default=True, type=int, help="windows per model (one batch)")
@click.option("--offset", default=0, show_default=True, type=int, help="first token of the first window")
@click.option("--link", "links", multiple=True,
              help="extra modelled link BW_MBPS:RTT_MS (e.g. 400:20); lan and wan are always included")
@click.option("--weights", type=click.Choice(["public", "private"]), default="public", show_default=True)
@click.option("--dealer", type=click.Choice(["local", "ttp"]), default="local", show_default=True)
@click.option("--threads", default=1, show_default=True, type=int, help="torch threads per party")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of random-weight models")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True, help="seconds a party waits for its peer")
@click.option("--data", default=None, help="data dir (or the wiki.test.raw file); default $PMPC_DATA or ../shared/data")
@click.option("--out", "-o", default="runs/bench", show_default=True, help="output directory (resumable)")
@click.option("--fresh", is_flag=True, help="discard rows already in OUT/bench.json")
@click.option("--redo", default="", help="comma-separated protocols to run again for the given models")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.pass_context
def bench(ctx, models, protos, tokens, windows, offset, links, weights, dealer, threads, seed, timeout_s, data,
          out, fresh, redo, quiet):
    """Benchmark models x protocols under real 2-party MPC on the SAME WikiText-2 windows: wall
    time per party, rounds and bytes per function and in total, modelled LAN/WAN (and --link)
    time, speedup over `exact`, top-1 agreement and KL against plaintext. Writes OUT/bench.json
    (full configuration), OUT/bench.md and OUT/bench.png after every row; reruns resume."""
    if ctx.invoked_subcommand is not None:
        return
    from eval.perf import bench

    cfg = bench.BenchConfig(models=_csv(models) if models else list(bench.DEFAULT_MODELS),
                            protocols=_csv(protos) if protos else list(bench.DEFAULT_PROTOCOLS),
                            tokens=tokens, windows=windows, offset=offset,
                            links=list(dict.fromkeys(["lan", "wan", *links])), weights=weights, dealer=dealer,
                            threads=threads, seed=seed, timeout_s=timeout_s, data=data or "")
    res = bench.run(cfg, out, progress=not quiet, fresh=fresh, redo=_csv(redo))
    click.echo(bench.markdown(res))
    click.echo(f"wrote {out}/bench.json, bench.md, bench.png")


@bench.command("errors")
@click.option("--model", "-m", default="smollm2", show_default=True)
@click.option("--protocols", "-p", "protos", default="iron,bolt,bumblebee,puma,nexus", show_default=True)
@click.option("--tokens", "-t", default=16, show_default=True, type=int)
@click.option("--windows", "-w", default=1, show_default=True, type=int)
@click.option("--offset", default=0, show_default=True, type=int)
@click.option("--threads", default=1, show_default=True, type=int)
@click.option("--timeout", "timeout_s", default=600.0, show_default=True)
@click.option("--data", default=None, help="data dir (or the wiki.test.raw file)")
@click.option("--out", "-o", default="runs/errors", show_default=True, help="output directory (resumable)")
@click.option("--presets", default=None,
              help="where to write the noise presets (default pmpc/presets/measured_errors.json)")
@click.option("--fresh", is_flag=True, help="discard every stored row")
@click.option("--redo", default="", help="comma-separated protocols to measure again")
@click.option("--refit", is_flag=True, help="recompute fits/plots/presets of stored rows from their saved errors")
@click.option("--quiet", "-q", is_flag=True)
def errors(model, protos, tokens, windows, offset, threads, timeout_s, data, out, presets, fresh, redo, refit, quiet):
    """Measure each protocol's error at the input of W_up (post-attention norm output) and W_down
    (act(gate) * up), per layer, from real MPC forwards over WikiText-2 — a MEASUREMENT MODE: the
    tapped activations are revealed to the client. Fits Gaussian and Laplace (scipy.stats), reports
    sigma / b and the better fit beside the paper's Table 2, plots histograms, and writes the fits
    as noise presets for the simulator (`measured:<protocol>`)."""
    from eval.perf import errors_fit

    cfg = errors_fit.ErrorsConfig(model=model, protocols=_csv(protos), tokens=tokens, windows=windows, offset=offset,
                                  threads=threads, timeout_s=timeout_s, data=data or "")
    res = errors_fit.run(cfg, out, presets_path=presets, progress=not quiet, fresh=fresh, redo=_csv(redo), refit=refit)
    click.echo(errors_fit.markdown(res))
    click.echo(f"wrote {out}/errors.json, errors.md, errors_<protocol>.png and presets {res['presets_path']}")


@bench.command("peers")
@click.option("--model", "-m", default="smollm2", show_default=True, help="a Llama-family model pmpc loads")
@click.option("--tokens", "-t", default=16, show_default=True, type=int, help="tokens of the WikiText-2 window")
@click.option("--offset", default=0, show_default=True, type=int, help="first token of the window")
@click.option("--protocols", "-p", "protos", default="exact,bolt,bumblebee,iron,puma", show_default=True,
              help="pmpc protocols with the local dealer")
@click.option("--ttp-protocols", default="exact,bolt,bumblebee", show_default=True,
              help="pmpc protocols also run with the ttp dealer ('' for none)")
@click.option("--spu", "spu_protocols", default="SEMI2K,SEMI2K:FM128,CHEETAH", show_default=True,
              help="SPU rows as PROTOCOL[:FIELD] (default field FM64; '' for none)")
@click.option("--no-micro", is_flag=True, help="skip the SPU CHEETAH per-primitive microbenchmarks")
@click.option("--cheetah-layers", type=int, default=None,
              help="run K layers (+ the head) under CHEETAH and scale to the model's depth (labelled)")
@click.option("--semi2k-layers", type=int, default=None, help="the same for SEMI2K")
@click.option("--no-shipped", is_flag=True, help="leave out CrypTen as shipped")
@click.option("--threads", default=1, show_default=True, type=int, help="torch threads per pmpc party")
@click.option("--timeout", "timeout_s", default=1800.0, show_default=True, help="seconds per row")
@click.option("--data", default=None, help="data dir (or the wiki.test.raw file)")
@click.option("--venv", default="", help="the SPU venv (default $PMPC_PEERS_VENV or ~/.cache/pmpc/peers-venv)")
@click.option("--out", "-o", default="runs/peers", show_default=True, help="output directory (resumable)")
@click.option("--fresh", is_flag=True, help="discard rows already in OUT/peers.json")
def peers(model, tokens, offset, protos, ttp_protocols, spu_protocols, no_micro, cheetah_layers, semi2k_layers,
          no_shipped, threads, timeout_s, data, venv, out, fresh):
    """The same Llama prefill in pmpc (local and ttp dealer), CrypTen as shipped, and SecretFlow SPU
    (SEMI2K, CHEETAH; its own venv, built on first use by bench/peers/venv.sh), back to back:
    wall time, bytes and rounds from each system's own counters, peak RSS, fidelity against
    plaintext, ratios to pmpc bolt; then each protocol over `exact` measured in the dealer model
    and MODELLED in OT-based 2PC (SIRNN, Cheetah), beside the seed paper's Table 1. Writes
    OUT/peers.json and OUT/peers.md after every row; reruns resume."""
    import shlex
    import sys

    from eval.perf import peers

    cfg = peers.PeersConfig(model=model, tokens=tokens, offset=offset, protocols=_csv(protos),
                            ttp_protocols=_csv(ttp_protocols), dealers=["local", "ttp"] if _csv(ttp_protocols) else ["local"],
                            shipped=not no_shipped, spu=_csv(spu_protocols), cheetah_layers=cheetah_layers,
                            semi2k_layers=semi2k_layers, micro=not no_micro, threads=threads, timeout_s=timeout_s, data=data or "", venv=venv)
    command = "pmpc bench peers " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    res = peers.run(cfg, out, command=command, fresh=fresh, progress=lambda m: click.echo(m, err=True))
    click.echo(peers.markdown(res))
    click.echo(f"wrote {out}/peers.json, peers.md")


COMMANDS = [bench]
