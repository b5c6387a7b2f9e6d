"""``pmpc deploy``: the MPC runtime as a deployment — separate hosts on emulated links, dealer modes."""
from __future__ import annotations

import json

import click

from pmpc.errors import UserError


@click.group("deploy")
def deploy():
    """Deployment checks: parties as separate hosts (network namespaces) on emulated links."""


@deploy.command("netlab")
@click.option("--model", "-m", default="tiny-random-llama", show_default=True)
@click.option("--protocol", "-p", default="exact", show_default=True)
@click.option("--ids", default="1,2,3", show_default=True, help="the client's prompt as token ids")
@click.option("--max-new-tokens", "-n", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--dealer", type=click.Choice(["local", "ttp"]), default="ttp", show_default=True)
@click.option("--weights", type=click.Choice(["public", "private"]), default="public", show_default=True)
@click.option("--links", default="lan,wan", show_default=True,
              help="comma-separated: lan, wan, or BW_MBPS:RTT_MS (e.g. 100:10)")
@click.option("--preprocess/--no-preprocess", default=True, show_default=True,
              help="offline/online split: the online phase is timed alone (holds the query's tuples in memory)")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the measurements here")
def netlab(model, protocol, ids, max_new_tokens, dealer, weights, links, preprocess, timeout_s, json_path):
    """Run client, server (and dealer) as separate hosts in network namespaces joined by an
    emulated link, once with no delay and once per link; compare the measured online time with
    the cost model's prediction for the same link. Needs root."""
    from pmpc.mpc import cost, netlab as nl

    reason = nl.unavailable()
    if reason:
        raise UserError(f"network namespaces are not available here: {reason}")
    try:
        chosen = [cost.parse_link(s.strip()) for s in links.split(",") if s.strip()]
    except ValueError as e:
        raise UserError(str(e)) from None
    log = lambda s: click.echo(f"[netlab] {s}", err=True)  # noqa: E731
    log(f"{model} / {protocol}, dealer {dealer}, {max_new_tokens} new tokens; emulator: TUN wire "
        f"(tc netem {'available' if nl.netem_available() else 'not in this kernel'})")
    try:
        res = nl.measure(chosen, model=model, protocol=protocol, ids=ids, new_tokens=max_new_tokens,
                         dealer=dealer, weights=weights, timeout_s=timeout_s, preprocess=preprocess, log=log)
    except RuntimeError as e:
        raise UserError(f"netlab run failed: {str(e).splitlines()[0] if str(e) else e!r}") from None
    click.echo(nl.table(res))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=2, default=str)


COMMANDS = [deploy]
