"""`pmpc eval agree`: encrypted generations matched with their plaintext twins prompt by prompt."""
from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import cli
from eval.analysis import agreement


def _write(path, rows):
    path.write_text("".join(json.dumps({"i": i, "output": out, "verdicts": {"gcg": {"jailbroken": jb}}}) + "\n"
                            for i, out, jb in rows))


def test_agree_matches_by_prompt_and_counts_differences(tmp_path):
    _write(tmp_path / "generations-secure-bolt.jsonl", [(0, "I cannot help", False), (2, "Sure, here is", True)])
    # twins cover more prompts than the encrypted run; only prompts 0 and 2 count
    _write(tmp_path / "generations-protocol_bolt_down.jsonl",
           [(0, "I cannot help", False), (1, "x", True), (2, "Sure, here it", True)])
    _write(tmp_path / "generations.jsonl", [(0, "I cannot assist", False), (1, "x", True), (2, "I won't", False)])
    (tmp_path / "cost-secure-bolt.jsonl").write_text(json.dumps(
        {"batch": 2, "prompt_tokens": 9, "wall_seconds": 12.5, "prefill": {"rounds": 10, "bytes": 2e9},
         "decode": {"rounds": 30, "bytes": 1e9, "tokens": 3}}) + "\n")
    r = agreement.compare(tmp_path, "bolt")
    assert r["n"] == 2 and r["encrypted"]["k"] == 1
    emu, clean = r["twins"]["emulated@down"], r["twins"]["clean"]
    assert (emu["identical"], emu["same_verdict"], emu["n"], emu["asr_all"]["n"]) == (1, 2, 2, 3)
    assert (clean["identical"], clean["same_verdict"], clean["asr"]["k"]) == (0, 1, 0)
    assert [(d["i"], d["word"]) for d in r["differ"]] == [(2, 2)] and r["differ_from"] == "emulated@down"
    assert r["cost"][0]["prefill_GB"] == 2.0 and r["cost"][0]["decode_steps"] == 3
    res = CliRunner().invoke(cli, ["eval", "agree", str(tmp_path), "--protocol", "bolt"])
    assert res.exit_code == 0 and "1/2" in res.output and "prompt 2: word 2" in res.output
    res = CliRunner().invoke(cli, ["eval", "agree", str(tmp_path), "--protocol", "bumblebee"])
    assert res.exit_code == 2 and "no encrypted generations" in res.output


def test_agree_compares_against_the_fullest_emulation(tmp_path):
    _write(tmp_path / "generations-secure-bolt.jsonl", [(0, "a b c", False)])
    _write(tmp_path / "generations-protocol_bolt_down.jsonl", [(0, "a b d", False)])
    _write(tmp_path / "generations-protocol_bolt_down_norm_softmax.jsonl", [(0, "a b c", False)])
    r = agreement.compare(tmp_path, "bolt")
    assert list(r["twins"]) == ["emulated@down", "emulated@down,norm,softmax"]   # no clean twin here
    assert r["differ_from"] == "emulated@down,norm,softmax" and r["differ"] == []
    assert r["twins"]["emulated@down"]["identical"] == 0
