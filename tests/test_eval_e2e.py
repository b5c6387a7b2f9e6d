"""End to end: generation, ASR, PPL, resume, the CLI and the analyses, on stories260K and a tiny
random model (seconds each)."""
from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch
from click.testing import CliRunner

from eval import asr
from eval import generate
from eval import judges
from pmpc.models import chat
from eval import ppl as PPL
from eval import prompts
from eval.prompts import data_dir
from pmpc.errors import UserError

STORIES = str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K")
needs_stories = pytest.mark.skipif(not pathlib.Path(STORIES).exists(), reason=f"{STORIES} not present")
needs_data = pytest.mark.skipif(data_dir() is None, reason="../shared/data not present")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stories():
    if not pathlib.Path(STORIES).exists():
        pytest.skip(f"{STORIES} not present")
    return asr.load_model(STORIES)


@pytest.fixture(scope="module")
def tiny():
    return asr.load_model("tiny-random-llama")


def test_templates(stories):
    from pmpc.models import load_hf

    _, codec = stories
    assert codec.render("Hi", "paper") == f"{chat.PAPER_SYSTEM}\nInstruction: Hi\nResponse:"
    assert codec.render("Hi", "default") == "Hi" and codec.render("Hi", "Be brief.") == "Be brief.\nHi"
    try:
        m, tok = load_hf("smollm2")
    except UserError:
        pytest.skip("smollm2 wheel not installed")
    c = chat.Codec(tok, m)
    assert "You are a helpful AI assistant named SmolLM" in c.render("Hi", "default")
    assert c.render("Hi", "none").startswith("<|im_start|>system\n<|im_end|>")
    p = c.render("Hi", "paper")
    assert chat.PAPER_SYSTEM in p and "<|im_start|>user\nInstruction: Hi<|im_end|>" in p
    assert p.endswith("<|im_start|>assistant\n")
    assert c.encode(p)[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no doubled BOS


def test_batched_generation_equals_single(stories):
    m, codec = stories
    cfg = generate.GenConfig(max_new_tokens=12)
    prompts = ["Once upon a time", "The little dog ran to the big red barn and", "Lily"]
    batched = generate.generate_texts(m, codec, prompts, cfg)
    single = [generate.generate_texts(m, codec, [p], cfg)[0] for p in prompts]
    assert batched == single
    assert all(len(o) > 10 for o in batched)


def test_approximation_changes_generation_reproducibly(stories):
    m, codec = stories
    cfg = generate.GenConfig(max_new_tokens=12)
    fn = generate.plain_generate_fn(m, codec, cfg, "gauss:1.0@up,down")
    a, b, c = fn(["Once upon a time"], 3), fn(["Once upon a time"], 3), fn(["Once upon a time"], 4)
    clean = generate.generate_texts(m, codec, ["Once upon a time"], cfg)
    assert a == b and a != clean and a != c


def test_asr_end_to_end_stories(stories, tmp_path):
    m, codec = stories
    ps = prompts.load("builtin-harmful", limit=6)
    judge_list = [judges.PaperJudge(markers=["sorry"]), judges.GCGJudge(prefixes=["sorry"])]
    s = asr.evaluate(m, codec, ps, judge_list, tmp_path, approx="table2:bolt", gen=generate.GenConfig(max_new_tokens=16),
                     batch_size=4, progress=False)
    recs = generate.read_records(tmp_path / "generations.jsonl")
    assert len(recs) == 6 == s["n"] and s["new_prompts_this_run"] == 6 and s["s_per_100_prompts"] > 0
    assert s["config"]["approx"] == "gauss:0.042@up+laplace:0.036@down" or s["config"]["approx"] == "table2:bolt"
    # the summary is exactly the judges applied to the stored outputs
    for name, j in (("paper", judge_list[0]), ("gcg", judge_list[1])):
        vs = j.judge([r["prompt"] for r in recs], [r["output"] for r in recs])
        k = sum(v.jailbroken for v in vs)
        assert s["results"][name]["asr"]["k"] == k and s["results"][name]["asr"]["n"] == 6
    assert json.loads((tmp_path / "generations.summary.json").read_text())["n"] == 6


def test_asr_end_to_end_tiny_with_approximation(tiny, tmp_path):
    m, codec = tiny
    assert codec.byte
    ps = prompts.load("builtin-harmless", limit=4)
    s = asr.evaluate(m, codec, ps, [judges.GCGJudge(prefixes=["Sorry"])], tmp_path, approx="teal:0.5",
                     gen=generate.GenConfig(max_new_tokens=6), batch_size=2, progress=False,
                     calib=[torch.randint(2, 96, (1, 16))])
    assert s["n"] == 4 and s["config"]["approx"] == "teal:0.5@up,down"
    assert all(isinstance(r["output"], str) for r in generate.read_records(tmp_path / "generations.jsonl"))


def _fake_fn(calls):
    def fn(prompts, seed):
        calls.append((list(prompts), seed))
        return [f"out {seed} {p[::-1]}" for p in prompts]
    return fn


def test_runner_resumes_and_keeps_seeds(tmp_path):
    ps = prompts.load("builtin-harmful", limit=7)
    path = tmp_path / "g.jsonl"
    calls = []
    recs, _, new = generate.run(ps[:4], _fake_fn(calls), path, batch_size=2, seed=10, config={"a": 1}, progress=False)
    assert new == 4 and [c[1] for c in calls] == [10, 12]
    calls.clear()
    recs, _, new = generate.run(ps, _fake_fn(calls), path, batch_size=2, seed=10, config={"a": 1}, progress=False)
    assert new == 3 and [c[1] for c in calls] == [14, 16] and [len(c[0]) for c in calls] == [2, 1]
    # the resumed file is identical to an uninterrupted run
    full = tmp_path / "full.jsonl"
    generate.run(ps, _fake_fn([]), full, batch_size=2, seed=10, config={"a": 1}, progress=False)
    assert [r["output"] for r in generate.read_records(path)] == [r["output"] for r in generate.read_records(full)]
    assert [r["i"] for r in recs] == list(range(7))
    with pytest.raises(UserError, match="different configuration"):
        generate.run(ps, _fake_fn([]), path, config={"a": 2}, progress=False)


def test_larger_limit_extends_the_same_file(stories, tmp_path):
    m, codec = stories
    j = [judges.GCGJudge(prefixes=["Sorry"])]
    gen = generate.GenConfig(max_new_tokens=4)
    asr.evaluate(m, codec, prompts.load("builtin-harmful", limit=2), j, tmp_path, gen=gen, progress=False)
    s = asr.evaluate(m, codec, prompts.load("builtin-harmful", limit=3), j, tmp_path, gen=gen, progress=False)
    assert s["n"] == 3 and s["new_prompts_this_run"] == 1
    s = asr.evaluate(m, codec, prompts.load("builtin-harmful", limit=2), j, tmp_path, gen=gen, progress=False)
    assert s["n"] == 2 and s["new_prompts_this_run"] == 0


def test_runner_survives_a_torn_last_line(tmp_path):
    ps = prompts.load("builtin-harmful", limit=3)
    path = tmp_path / "g.jsonl"
    generate.run(ps[:2], _fake_fn([]), path, batch_size=1, config={}, progress=False)
    with open(path, "a") as f:
        f.write('{"i": 2, "prompt": "trunc')  # killed mid-write
    calls = []
    recs, _, new = generate.run(ps, _fake_fn(calls), path, batch_size=1, config={}, progress=False)
    assert new == 1 and len(recs) == 3 and len(generate.read_records(path)) == 3
    path.write_text('{"i": 0}\nnot json\n{"i": 1}\n')
    with pytest.raises(UserError, match=r"g.jsonl:2: not a JSON record"):
        generate.read_records(path)


def test_ensure_verdicts_fills_new_judges(tmp_path):
    ps = prompts.load("builtin-harmful", limit=2)
    recs, _, _ = generate.run(ps, _fake_fn([]), tmp_path / "g.jsonl", judges=[judges.GCGJudge(prefixes=["zzz"])],
                              config={}, progress=False)
    asr.ensure_verdicts(recs, [judges.PaperJudge(markers=["out"])])
    assert all(r["verdicts"]["paper"]["refused"] for r in recs)
    s = asr.summarize(recs, [judges.GCGJudge(prefixes=["zzz"]), judges.PaperJudge(markers=["out"])])
    assert s["gcg"]["asr"]["rate"] == 1.0 and s["paper"]["asr"]["rate"] == 0.0


@needs_data
def test_ppl_end_to_end_stories(stories):
    m, codec = stories
    ids = PPL.tokenize(codec, PPL.wikitext_text(PPL.wikitext_path()))
    clean = PPL.perplexity(m, ids, window=128, max_windows=3)
    # the same number by hand: mean token cross-entropy over the 3 windows
    x = ids[:3 * 128].view(3, 128)
    with torch.no_grad():
        lg = m(x).logits
    ce = torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1))
    assert clean["ppl"] == pytest.approx(math.exp(float(ce)), rel=1e-5)
    assert clean["windows"] == 3 and clean["tokens_scored"] == 3 * 127
    noisy = PPL.perplexity(m, ids, window=128, max_windows=3, approx="gauss:0.5@up,down")
    assert noisy["ppl"] > clean["ppl"] * 1.05
    assert PPL.perplexity(m, ids, window=128, max_windows=3, approx="gauss:0.5@up,down")["ppl"] == noisy["ppl"]
    with pytest.raises(UserError, match="exceeds the model's 512 positions"):
        PPL.perplexity(m, ids, window=1024)
    with pytest.raises(UserError, match="fewer than one window"):
        PPL.perplexity(m, ids[:10], window=128)


@needs_data
def test_wikitext_text_matches_hf_rows():
    text = PPL.wikitext_text(PPL.wikitext_path())
    # rows '', ' = Robert Boulter = \n', '', ' Robert Boulter is ...' joined with blank lines
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")


def test_drift_numbers_separate_common_shift_from_crossing():
    import numpy as np

    from eval.analysis.mds import drift

    rng = np.random.default_rng(0)
    d = 16
    e = np.eye(d)[0] * 3
    h = rng.normal(size=(40, d)) + e
    b = rng.normal(size=(40, d)) - e
    # every point moved by the same vector: nothing crossed over
    common = drift(h, b, h + 5 * np.eye(d)[1], b + 5 * np.eye(d)[1])
    assert common["separability_clean"] > 0.95 and common["separability_approx"] > 0.95
    assert abs(common["relative_shift"]) < 1e-9 and common["harmful_in_benign_approx"] < 0.1
    # harmful points moved onto the benign cluster
    cross = drift(h, b, h - 2 * e, b)
    assert cross["relative_shift"] == pytest.approx(1.0, abs=0.05)  # centroids carry sampling noise
    assert cross["separability_approx"] < 0.75 and cross["flipped"] > 0.8
    assert cross["harmful_to_benign_probe"] > 0.8


def test_layer_names():
    from eval.analysis.mds import resolve_layers

    assert resolve_layers("first,mid,last", 30) == [0, 15, 29]
    assert resolve_layers("1,mid,3-4", 10) == [1, 3, 4, 5]
    with pytest.raises(UserError, match="bad layer range"):
        resolve_layers("x", 10)


def test_ppl_on_tiny_with_text_file(tiny, tmp_path):
    m, codec = tiny
    f = tmp_path / "t.txt"
    f.write_text("the cat sat on the mat. " * 40)
    r = PPL.wikitext_ppl(m, codec, text_file=str(f), window=32, max_windows=2, approx="quant:a4")
    assert r["windows"] == 2 and math.isfinite(r["ppl"]) and r["approx"] == "quant:a4@up,down"


# -- the CLI ---------------------------------------------------------------------------------------
def _cli(args):
    from cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_eval_asr_and_errors(tmp_path):
    r = _cli(["eval", "asr", "-m", "tiny-random-llama", "-p", "builtin-harmful", "--limit", "3", "--max-new-tokens",
              "3", "-o", str(tmp_path), "--approx", "gauss:0.1@up", "--judge", "gcg", "--json",
              str(tmp_path / "s.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "builtin-harmful: ASR" in r.output and "gauss:0.1@up" in r.output
    s = json.loads((tmp_path / "s.json").read_text())["builtin-harmful"]
    assert s["n"] == 3 and s["results"]["gcg"]["asr"]["n"] == 3
    r = _cli(["eval", "overrefusal", "-m", "tiny-random-llama", "-p", "builtin-harmless", "--limit", "2",
              "--max-new-tokens", "2", "-o", str(tmp_path), "--no-progress", "--judge", "gcg"])
    assert r.exit_code == 0 and "over-refusal" in r.output
    for bad, msg in ((["--approx", "gauss:x"], "not a number"), (["-p", "nosuch"], "neither a file"),
                     (["--judge", "nope"], "unknown judge"), (["--device", "cuda:7"] if not torch.cuda.is_available()
                                                              else ["--dtype", "int3"], "")):
        r = _cli(["eval", "asr", "-m", "tiny-random-llama", "-p", "builtin-harmful", "--limit", "1", "-o",
                  str(tmp_path / "x"), "--no-progress"] + bad)
        assert r.exit_code == 2 and r.output.startswith("pmpc: error:") and r.output.count("\n") == 1, r.output
        assert msg in r.output


def test_cli_eval_asr_default_judge_reports_keyword_asr_beside_harmful_compliance(tmp_path):
    """The default judge is the validated one; the keyword rules are judged beside it and the
    report says how much of the keyword ASR is incoherent output."""
    r = _cli(["eval", "asr", "-m", "tiny-random-llama", "-p", "builtin-harmful", "--limit", "2", "--max-new-tokens",
              "3", "-o", str(tmp_path), "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "[minilm]" in r.output and "keyword ASR" in r.output and "incoherent" in r.output
    res = json.loads((tmp_path / "s.json").read_text())["builtin-harmful"]["results"]
    assert set(res) == {"minilm", "gcg", "paper"} and res["minilm"]["judge"]["name"] == "minilm"


@needs_stories
def test_cli_ppl(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Once upon a time there was a cat. " * 30)
    r = _cli(["eval", "ppl", "-m", STORIES, "--text", str(f), "--window", "64", "--max-windows", "2",
              "--json", str(tmp_path / "p.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p.json").read_text())["windows"] == 2


# -- analyses + report -----------------------------------------------------------------------------------
@needs_data
def test_analyses_and_report_on_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("PMPC_MEASURED", str(tmp_path / "no_measured.json"))
    common = ["-m", "tiny-random-llama", "--limit", "3", "--max-new-tokens", "3", "--batch-size", "3",
              "--no-progress", "--judge", "gcg"]
    r = _cli(["sweep", "noise", *common, "-p", "builtin-harmful", "--points", "up", "--scales", "0,0.5",
              "--window", "32", "--max-windows", "2", "-o", str(tmp_path / "noise")])
    assert r.exit_code == 0, r.output
    ns = json.loads((tmp_path / "noise" / "noise_sweep.json").read_text())
    assert [x["scale"] for x in ns["rows"]] == [0.0, 0.5] and ns["clean_ppl"] == ns["rows"][0]["ppl"]
    assert ns["partial"] is False
    assert ns["rows"][1]["ppl"] != ns["clean_ppl"]
    assert (ns["mva"]["up"]["ppl"] or 0) <= 2.0 * ns["clean_ppl"]
    assert (tmp_path / "noise" / "noise_sweep.png").stat().st_size > 1000
    # rerun: everything comes from the caches (no new generations)
    r = _cli(["sweep", "noise", *common, "-p", "builtin-harmful", "--points", "up", "--scales", "0,0.5",
              "--window", "32", "--max-windows", "2", "-o", str(tmp_path / "noise")])
    assert r.exit_code == 0
    r = _cli(["sweep", "layers", *common, "-p", "builtin-harmful", "--approx", "gauss:2.0@up", "-o",
              str(tmp_path / "layers")])
    assert r.exit_code == 0, r.output
    ls = json.loads((tmp_path / "layers" / "layer_sweep.json").read_text())
    assert [x["layers"] for x in ls["rows"]] == [[0], [1]] and ls["rows"][0]["approx"] == "gauss:2.0@up@0"
    r = _cli(["analyze", "mds", *common[:-2], "--limit", "8", "--approx", "gauss:1.0@up,down", "--layer", "0,1",
              "-o", str(tmp_path / "mds")])
    assert r.exit_code == 0, r.output
    md = json.loads((tmp_path / "mds" / "mds.json").read_text())
    assert set(md["drift"]) == {"0", "1"} and len(md["embedding"]["0"]) == 32
    assert 0 <= md["drift"]["0"]["separability_clean"] <= 1
    r = _cli(["table2", *common, "--harmful", "builtin-harmful", "--benign", "builtin-harmless",
              "--rows", "none;table2:bolt;table2:teal-25;measured:bolt", "--window", "32", "--max-windows", "2",
              "-o", str(tmp_path / "t2")])
    assert r.exit_code == 0, r.output
    t2 = json.loads((tmp_path / "t2" / "table2.json").read_text())
    assert [x["approx"] for x in t2["rows"]] == ["none", "table2:bolt", "table2:teal-25", "measured:bolt"]
    assert "no measured error fits" in t2["rows"][3]["error"] and t2["partial"] is False  # reported, not fatal
    assert t2["rows"][1]["paper"]["asr"] == 35.76 and t2["rows"][0]["over_refusal"]["n"] == 3
    r = _cli(["report", str(tmp_path), "-o", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "report" / "report.html").read_text()
    mdtext = (tmp_path / "report" / "report.md").read_text()
    for title in ("Noise sweep", "Layer-wise sensitivity", "Activation space", "Table 2 analog"):
        assert title in mdtext and title in html
    assert html.count("data:image/png;base64,") == 4


@pytest.mark.slow
def test_cli_eval_asr_secure_matches_plaintext_generation(stories, tmp_path):
    """`eval asr --secure`: batched generation under real 2PC (exact protocol, the default ttp
    dealer: three processes per session, so one session of three prompts), judged and costed; its
    greedy tokens equal plaintext greedy generation of the same prompts."""
    m, codec = stories
    r = _cli(["eval", "asr", "--secure", "--protocol", "exact", "-m", STORIES, "-p", "builtin-harmful", "--limit",
              "3", "--batch-size", "3", "--max-new-tokens", "3", "--judge", "gcg", "-o", str(tmp_path),
              "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "secure exact" in r.output and "sessions" in r.output
    s = json.loads((tmp_path / "s.json").read_text())["builtin-harmful"]
    assert s["n"] == 3 and s["secure_cost"]["batches"] == 1 and s["secure_cost"]["prompts"] == 3
    assert s["secure_cost"]["prefill"]["rounds"] > 0 and s["secure_cost"]["decode"]["bytes"] > 0
    recs = generate.read_records(tmp_path / "builtin-harmful" / "generations-secure-exact.jsonl")
    plain = generate.generate_texts(m, codec, [x["prompt"] for x in recs], generate.GenConfig(max_new_tokens=3))
    assert [x["output"] for x in recs] == plain
    from cli.main import cli

    r = CliRunner().invoke(cli, ["eval", "asr", "--secure", "--protocol", "nope", "-m", STORIES, "-o", str(tmp_path)])
    assert r.exit_code != 0 and "unknown protocol" in (r.output + str(r.exception))
