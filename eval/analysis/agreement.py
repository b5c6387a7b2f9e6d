"""Encrypted ASR beside its plaintext twins: do real 2PC generations agree with the emulation?

Reads what ``pmpc eval asr --secure --protocol P`` and its plaintext twins (``pmpc eval asr`` clean
and ``--approx protocol:P``) wrote into the same output directory, matches the generations prompt
by prompt (``i``), and reports on the prompts the encrypted run covers: each run's ASR under one
judge, how many texts are identical to the encrypted text, how many verdicts agree, the prompts
that differ (with the first differing word), and the client-side cost per 2PC session.
"""
from __future__ import annotations

import pathlib

from eval.generate import read_records
from eval.judges import fmt_rate, rate
from pmpc import markdown


def _read(path: pathlib.Path) -> dict[int, dict]:
    return {int(r["i"]): r for r in read_records(path)}


def _first_diff(a: str, b: str) -> int:
    wa, wb = a.split(), b.split()
    for k, (x, y) in enumerate(zip(wa, wb)):
        if x != y:
            return k
    return min(len(wa), len(wb))


def compare(set_dir: str | pathlib.Path, protocol: str, judge: str = "gcg") -> dict:
    """Compare ``generations-secure-P.jsonl`` in ``set_dir`` with the clean and emulated twins."""
    d = pathlib.Path(set_dir)
    enc = _read(d / f"generations-secure-{protocol}.jsonl")
    if not enc:
        raise FileNotFoundError(f"no encrypted generations at {d / f'generations-secure-{protocol}.jsonl'}")
    # one emulated twin per emulated point set (``--approx protocol:P`` = the activation only;
    # ``protocol:P@down,norm,softmax`` = every function the encrypted run approximates)
    emus = sorted(d.glob(f"generations-protocol_{protocol}_*.jsonl"), key=lambda f: (f.stem.count("_"), f.stem))
    twins = {f"emulated@{f.stem.split(f'protocol_{protocol}_', 1)[1].replace('_', ',')}": _read(f) for f in emus}
    twins["clean"] = _read(d / "generations.jsonl")
    ids = sorted(enc)

    def jb(r):
        return bool(r["verdicts"][judge]["jailbroken"])

    out = {"protocol": protocol, "judge": judge, "n": len(ids),
           "encrypted": rate(sum(jb(enc[i]) for i in ids), len(ids)), "twins": {}, "differ": []}
    for name, tw in twins.items():
        common = [i for i in ids if i in tw]
        if not common:
            continue
        out["twins"][name] = {
            "asr": rate(sum(jb(tw[i]) for i in common), len(common)),
            "asr_all": rate(sum(jb(r) for r in tw.values()), len(tw)),
            "identical": sum(tw[i]["output"] == enc[i]["output"] for i in common),
            "same_verdict": sum(jb(tw[i]) == jb(enc[i]) for i in common), "n": len(common)}
    out["differ_from"] = list(twins)[-2] if emus else "clean"   # the fullest emulation
    emu = twins[out["differ_from"]]
    for i in ids:
        if i in emu and emu[i]["output"] != enc[i]["output"]:
            out["differ"].append({"i": i, "word": _first_diff(enc[i]["output"], emu[i]["output"]),
                                  "encrypted_jailbroken": jb(enc[i]), "twin_jailbroken": jb(emu[i]),
                                  "encrypted": enc[i]["output"], "twin": emu[i]["output"]})
    out["cost"] = _cost(d / f"cost-secure-{protocol}.jsonl")
    return out


def _cost(path: pathlib.Path) -> list[dict]:
    return [{"batch": c.get("batch"), "prompt_tokens": c.get("prompt_tokens"), "wall_s": c.get("wall_seconds"),
             "prefill_rounds": c["prefill"]["rounds"], "prefill_GB": c["prefill"]["bytes"] / 1e9,
             "decode_rounds": c["decode"]["rounds"], "decode_GB": c["decode"]["bytes"] / 1e9,
             "decode_steps": c["decode"].get("tokens")} for c in read_records(path)]


def to_markdown(r: dict) -> str:
    p = r["protocol"]
    runs = [[f"encrypted {p} (2PC)", fmt_rate(r["encrypted"]), "-", "-"]]
    for name, t in r["twins"].items():
        label = "plaintext, clean" if name == "clean" else f"plaintext, {p} emulated at {name.split('@')[1]}"
        runs.append([label, fmt_rate(t["asr"]), f"{t['identical']}/{t['n']}", f"{t['same_verdict']}/{t['n']}"])
    lines = markdown.table(["run", f"ASR ({r['judge']}) on the {r['n']} encrypted prompts",
                            "text identical to the encrypted run", "same verdict"], runs)
    if r["differ"]:
        lines += ["", f"Texts that differ from the {r['differ_from']} twin (first differing word; verdicts "
                  "encrypted/twin):", ""]
        for d in r["differ"]:
            lines.append(f"- prompt {d['i']}: word {d['word']}; jailbroken {d['encrypted_jailbroken']}/"
                         f"{d['twin_jailbroken']}; encrypted: {d['encrypted'][:100]!r}")
    if r["cost"]:
        lines += [""] + markdown.table(
            ["session", "batch", "prompt tokens", "wall s", "prefill rounds", "prefill GB", "decode rounds", "decode GB"],
            [[k, c["batch"], c["prompt_tokens"], f"{c['wall_s']:.0f}", f"{c['prefill_rounds']:,}", f"{c['prefill_GB']:.1f}",
              f"{c['decode_rounds']:,}", f"{c['decode_GB']:.1f}"] for k, c in enumerate(r["cost"])])
    return "\n".join(lines)
