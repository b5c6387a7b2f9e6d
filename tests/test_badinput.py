"""Bad input: each case exits non-zero with ONE clear line on stderr, in bounded time.

Cases that need no party process run in-process (click's runner: the same command object the
`pmpc` script runs); port in use, a mismatched configuration between two `pmpc party` processes
and a mismatched dealer mode run as real separate processes.
"""
from __future__ import annotations

import os
import re
import pathlib
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from cli.main import cli
from pmpc import models
from pmpc.mpc import parties

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["-m", "tiny-random-llama", "-p", "exact", "-n", "1"]


def error_lines(text: str) -> list[str]:
    """stderr without progress bars (transformers' "Loading weights ... it/s]")."""
    return [ln for ln in text.splitlines() if ln.strip() and not re.search(r"\d+/\d+ \[|it/s\]", ln)]


def one_line_error(res, *needles, code=2):
    err = error_lines(res.stderr)
    assert res.exit_code == code, (res.exit_code, res.stderr, res.output)
    assert len(err) == 1 and err[0].startswith("pmpc: error: "), res.stderr
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_unknown_protocol():
    one_line_error(run("run", "-m", "tiny-random-llama", "--ids", "1,2", "-p", "nosuchproto"), "nosuchproto")


def test_unknown_model():
    one_line_error(run("run", "-m", "no/such/model", "--ids", "1,2", "-p", "exact"), "model not found")


def test_unknown_architecture():
    one_line_error(run("run", "-m", "tiny-random-nosucharch", "--ids", "1,2", "-p", "exact"), "nosucharch")


def test_empty_prompt(stories_dir):
    one_line_error(run("run", "-m", str(stories_dir), "-p", "exact", "--prompt", "   "), "empty prompt")
    import torch

    from pmpc.mpc import secure
    from pmpc.errors import UserError

    cfg = secure.GenConfig(model="tiny-random-llama", protocol="exact")
    spec = models.load_shapes("tiny-random-llama")
    empty = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(UserError, match="empty prompt"):
        secure.check_input(cfg, spec, secure.ClientInput(empty, empty))
    padded_only = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(UserError, match="empty prompt"):
        secure.check_input(cfg, spec, secure.ClientInput(padded_only, padded_only))


def test_prompt_longer_than_the_context():
    ctx = models.load_shapes("tiny-random-llama").max_positions
    ids = ",".join(["1"] * ctx)
    one_line_error(run("run", *TINY, "--ids", ids), "context")
    # the prompt fits, the new tokens do not
    ids = ",".join(["1"] * (ctx - 1))
    one_line_error(run("run", "-m", "tiny-random-llama", "-p", "exact", "-n", "4", "--ids", ids), "context")


def test_out_of_vocabulary_ids():
    one_line_error(run("run", *TINY, "--ids", "1,100000"), "out of range")


@pytest.fixture()
def checkpoints(tmp_path, stories_dir):
    cfg = (pathlib.Path(stories_dir) / "config.json").read_text()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(cfg)
    (corrupt / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(cfg)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    badcfg = tmp_path / "badcfg"
    badcfg.mkdir()
    (badcfg / "config.json").write_text("{ this is not json")
    (badcfg / "model.safetensors").write_bytes(b"")
    return corrupt, pickled, badcfg


def test_corrupt_and_pickle_checkpoints(checkpoints):
    corrupt, pickled, badcfg = checkpoints
    one_line_error(run("run", "-m", str(corrupt), "-p", "exact", "--ids", "1,2"), "cannot load")
    one_line_error(run("run", "-m", str(badcfg), "-p", "exact", "--ids", "1,2"), str(badcfg))
    line = one_line_error(run("run", "-m", str(pickled), "-p", "exact", "--ids", "1,2"), "pickle", "--allow-pickle")
    assert "pytorch_model.bin" in line
    # accepted only when asked for: then the (corrupt) pickle is read and fails with one line
    one_line_error(run("run", "-m", str(pickled), "-p", "exact", "--ids", "1,2", "--allow-pickle"), "cannot load")


def test_malformed_prompt_file(tmp_path):
    if "eval" not in cli.commands:
        pytest.skip("`pmpc eval` is not in this tree")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b'goal,target\n"unterminated,quote\n\xff\xfe\x00binary')
    res = run("eval", "asr", "-m", "tiny-random-llama", "--prompts", str(bad), "--no-progress", "-o", str(tmp_path),
              "--judge", "gcg", "--max-new-tokens", "1")
    one_line_error(res, "bad.csv")
    missing = run("eval", "asr", "-m", "tiny-random-llama", "--prompts", str(tmp_path / "none.csv"),
                  "--no-progress", "-o", str(tmp_path), "--judge", "gcg")
    one_line_error(missing, "none.csv")


def _pmpc(*args, timeout=180):
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    p.took = time.monotonic() - t0
    p.lines = error_lines(p.stderr)
    return p


def _spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        p = _pmpc("party", "--rank", "0", *TINY, "--ids", "1,2", "--timeout", "5",
                  "--rendezvous", f"tcp://127.0.0.1:{port}")
    assert p.returncode == 2 and len(p.lines) == 1, p.stderr
    assert p.lines[0].startswith("pmpc: error: party 0 (client):") and "in use" in p.lines[0], p.lines
    assert p.took < 90


def _pair(client_args, server_args, timeout="20"):
    port = parties.free_port()
    rdv = ["--rendezvous", f"tcp://127.0.0.1:{port}", "--timeout", timeout]
    procs = [_spawn("party", "--rank", "0", *client_args, "--ids", "1,2,3", *rdv),
             _spawn("party", "--rank", "1", *server_args, *rdv)]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        out.append((p.returncode, error_lines(err)))
    return out


def test_mismatched_configurations_are_detected_at_start():
    """Different protocol at each party: both stop at start with one line, no garbage computed."""
    t0 = time.monotonic()
    res = _pair(["-m", "tiny-random-llama", "-p", "exact", "-n", "1", "--dealer", "local"],
                ["-m", "tiny-random-llama", "-p", "crypten", "-n", "1", "--dealer", "local"])
    for code, lines in res:
        assert code == 2 and len(lines) == 1, (code, lines)
    client, server = res[0][1][0], res[1][1][0]
    assert "parties disagree on the configuration" in client and "parties disagree on the configuration" in server
    assert time.monotonic() - t0 < 200


def test_configuration_digest_covers_model_protocol_and_weights():
    """What the parties compare at start (the two-process test above exercises the exchange)."""
    from pmpc.mpc.secure import GenConfig

    llama, qwen = models.load_shapes("tiny-random-llama"), models.load_shapes("tiny-random-qwen2")
    base = GenConfig(model="tiny-random-llama", protocol="exact")
    d = base.digest(llama)
    assert GenConfig(model="tiny-random-qwen2", protocol="exact").digest(qwen) != d
    assert GenConfig(model="tiny-random-llama", protocol="crypten").digest(llama) != d
    assert GenConfig(model="tiny-random-llama", protocol="exact", weights="private").digest(llama) != d
    assert GenConfig(model="tiny-random-llama", protocol="exact", max_new_tokens=9).digest(llama) != d
    # the client's own sampling choices are not the server's business
    assert GenConfig(model="tiny-random-llama", protocol="exact", temperature=0.7, seed=3).digest(llama) == d


@pytest.mark.parametrize("var,value", [("PMPC_COMPARISON", "bitwise"), ("PMPC_DCF_MAX_LEVELS", "65536")])
def test_configuration_digest_covers_the_comparison_rule(monkeypatch, var, value):
    """Parties that would pick different comparisons (different messages) refuse at the start."""
    from pmpc.mpc.secure import GenConfig

    monkeypatch.delenv("PMPC_COMPARISON", raising=False)
    monkeypatch.delenv("PMPC_DCF_MAX_LEVELS", raising=False)
    llama = models.load_shapes("tiny-random-llama")
    d = GenConfig(model="tiny-random-llama", protocol="bolt").digest(llama)
    monkeypatch.setenv(var, value)
    assert GenConfig(model="tiny-random-llama", protocol="bolt").digest(llama) != d


def test_mismatched_dealer_modes_time_out_with_a_hint():
    res = _pair(["-m", "tiny-random-llama", "-p", "exact", "-n", "1", "--dealer", "ttp"],
                ["-m", "tiny-random-llama", "-p", "exact", "-n", "1", "--dealer", "local"], timeout="6")
    for code, lines in res:
        assert code == 2 and len(lines) == 1, (code, lines)
        assert "--dealer" in lines[0] or "did not answer" in lines[0] or "closed the connection" in lines[0], lines


def test_truncated_and_oversized_safetensors_headers(tmp_path, stories_dir):
    cfg = (pathlib.Path(stories_dir) / "config.json").read_text()
    real = (pathlib.Path(stories_dir) / "model.safetensors").read_bytes()
    cases = {
        "no-header": b"\x01\x02\x03",                                            # shorter than the length field
        "oversized": (1 << 40).to_bytes(8, "little") + b"{}",                     # announces a terabyte of header
        "cut-header": real[:8] + real[8:40],                                     # the JSON header cut short
        "cut-data": real[: len(real) // 2],                                      # tensors end past the file
    }
    for name, data in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(cfg)
        (d / "model.safetensors").write_bytes(data)
        line = one_line_error(run("run", "-m", str(d), "-p", "exact", "--ids", "1,2"), "cannot load", "safetensors")
        assert str(d) in line


def test_prompt_that_is_not_utf8(stories_dir):
    """A byte string that is not UTF-8 on the command line (the shell passes it through)."""
    p = _pmpc("run", "-m", str(stories_dir), "-p", "exact", "-n", "1", "--dealer", "local", "--prompt", "caf\udce9",
              timeout=120)
    assert p.returncode == 2 and len(p.lines) == 1, p.stderr
    assert p.lines[0] == "pmpc: error: --prompt is not valid UTF-8 text", p.lines


def test_a_directory_as_prompt_file(tmp_path):
    d = tmp_path / "prompts.csv"  # named like a prompt file
    d.mkdir()
    res = run("eval", "asr", "-m", "tiny-random-llama", "--prompts", str(d), "--no-progress", "-o",
              str(tmp_path / "out"), "--judge", "gcg", "--max-new-tokens", "1")
    one_line_error(res, "is a directory", str(d))


def test_unwritable_json_path_is_refused_before_the_run(tmp_path):
    """Checked before any party starts (it was found after the run, and the report lost)."""
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for bad, why in ((tmp_path, "is a directory"), (afile / "out.json", "not a directory")):
        t0 = time.monotonic()
        res = run("run", *TINY, "--ids", "1,2", "--json", str(bad))
        one_line_error(res, "--json", why)
        assert "fidelity" not in res.output and time.monotonic() - t0 < 30
        res = run("eval", "asr", "-m", "tiny-random-llama", "--prompts", "builtin-harmful", "--limit", "1",
                  "--no-progress", "-o", str(tmp_path / "o"), "--judge", "gcg", "--json", str(bad))
        one_line_error(res, "--json", why)
    assert not (tmp_path / "o").exists(), "the evaluation started before its output path was checked"


def test_private_weights_with_the_local_dealer_need_cost_only():
    line = one_line_error(run("run", *TINY, "--ids", "1,2", "--weights", "private", "--dealer", "local"),
                          "--weights private with --dealer local protects nothing", "--cost-only")
    assert "learns the weights" in line
    from pmpc.mpc import secure
    from pmpc.errors import UserError

    cfg = secure.GenConfig(model="tiny-random-llama", protocol="exact", weights="private")
    with pytest.raises(UserError, match="protect nothing"):
        secure.check_dealer(cfg, "local")
    secure.check_dealer(cfg, "local", cost_only=True)
    secure.check_dealer(cfg, "ttp")


def test_secure_commands_default_to_the_ttp_dealer():
    from cli.run import party as party_cmd
    from cli.run import run as run_cmd

    for cmd in (run_cmd, party_cmd, cli.commands["eval"].commands["asr"]):
        opt = next(p for p in cmd.params if p.name == "dealer")
        assert opt.default == "ttp", cmd.name
        assert "INSECURE against the client" in opt.help or "insecure against the client" in opt.help


def test_a_client_announcing_beyond_the_limits_is_refused_by_the_server():
    """The server's check of an announcement (the wire test sends it from a hostile client)."""
    import torch

    from pmpc.mpc import secure

    cfg = secure.GenConfig(model="tiny-random-llama", protocol="exact", max_new_tokens=2, max_prompt_tokens=16,
                           max_batch=2)
    spec = models.load_shapes("tiny-random-llama")
    ok = torch.tensor([[0, 1, 1], [1, 1, 1]])
    secure.check_input(cfg, spec, secure.ClientInput(ok, ok))
    from pmpc.errors import UserError

    for ids, match in ((torch.ones(3, 4, dtype=torch.long), "batch of 3"), (torch.ones(1, 17, dtype=torch.long),
                                                                          "limit of 16"),
                       (torch.ones(1, 63, dtype=torch.long), "context of 64")):
        with pytest.raises(UserError, match=match):
            secure.check_input(secure.GenConfig(model="tiny-random-llama", protocol="exact", max_new_tokens=2,
                                                max_batch=2, max_prompt_tokens=16 if "16" in match else 2048),
                               spec, secure.ClientInput(ids, ids))
    right_padded = torch.tensor([[1, 1, 0]])
    with pytest.raises(UserError, match="left-padded"):
        secure.check_input(cfg, spec, secure.ClientInput(right_padded, right_padded))
    assert secure.mask_of(3, [1, 3]).tolist() == [[0, 0, 1], [1, 1, 1]]
    secure.check_input(cfg, spec, secure.ClientInput(ok, ok, prefix=1))  # both rows start with token 1
    with pytest.raises(UserError, match="token of its own"):
        secure.check_input(cfg, spec, secure.ClientInput(ok, ok, prefix=2))
