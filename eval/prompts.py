"""Prompt sets: loaders for the usual benchmark files, a registry of named sets, a built-in set.

A prompt set is a list of :class:`Prompt`. :func:`load` takes a named set (``harmbench-test``,
``jbb-harmful``, ``xstest-safe``, ``builtin-harmful`` ... see :data:`NAMED`), a file path, or
``hf:DATASET[:SPLIT[:COLUMN]]`` (Hugging Face ``datasets``, only when installed and online).

File formats, auto-detected from the extension and (for CSV) the header, or forced with ``fmt``:
  * ``advbench``  CSV ``goal,target`` (AdvBench harmful_behaviors.csv)
  * ``harmbench`` CSV ``Behavior,FunctionalCategory,...`` (``standard`` rows by default)
  * ``jbb``       CSV with ``Goal`` (JBB harmful) or lower-case ``goal`` (JBB benign)
  * ``xstest``    CSV ``prompt,...,label`` (label safe / unsafe; filter with ``label``)
  * ``csv``       any CSV with a ``prompt`` column
  * ``json``      a list of objects with ``instruction`` (refusal-direction splits), ``prompt``,
                  ``goal`` or ``Behavior``, or a list of strings
  * ``jsonl``     one object (same fields) or string per line
  * ``txt``       one prompt per line (blank lines and ``#`` comments skipped)
A malformed file raises :class:`MalformedFile` (a UserError): ``path:line: problem``.

Named sets resolve against the data directory: ``data`` argument, else ``$PMPC_DATA``, else
``../shared/data`` next to the repository. The built-in set ships inside the package
(``eval/data/builtin_prompts.jsonl``, written for pmpc), so a fresh machine works with no data.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib

from pmpc import paths
from pmpc.errors import UserError
from pmpc.paths import data_dir  # noqa: F401  (the prompt sets' directory)

PKG_DATA = pathlib.Path(__file__).parent / "data"
BUILTIN = PKG_DATA / "builtin_prompts.jsonl"
FORMATS = ("advbench", "harmbench", "jbb", "xstest", "csv", "json", "jsonl", "txt")
TEXT_FIELDS = ("prompt", "instruction", "goal", "Goal", "Behavior", "behavior", "text")


class MalformedFile(UserError):
    """A prompt (or data) file that cannot be read: the message names file, line and problem."""

    def __init__(self, path, line, problem):
        super().__init__(f"{path}:{line}: {problem}")


@dataclasses.dataclass
class Prompt:
    text: str
    category: str = ""
    label: str = ""       # harmful | harmless | safe | unsafe ("" when the file says nothing)
    source: str = ""      # the set or file it came from
    id: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)


# name -> (file relative to the data dir, format, filters, kind). kind: what the set measures:
# "harmful" -> ASR; "benign" -> over-refusal.
NAMED = {
    "harmbench-test": ("harmbench_behaviors_text_test.csv", "harmbench", {}, "harmful"),
    "harmbench-val": ("harmbench_behaviors_text_val.csv", "harmbench", {}, "harmful"),
    "harmbench-all": ("harmbench_behaviors_text_all.csv", "harmbench", {}, "harmful"),
    "jbb-harmful": ("jbb_harmful_behaviors.csv", "jbb", {}, "harmful"),
    "jbb-benign": ("jbb_benign_behaviors.csv", "jbb", {}, "benign"),
    "xstest-safe": ("xstest_prompts.csv", "xstest", {"label": "safe"}, "benign"),
    "xstest-unsafe": ("xstest_prompts.csv", "xstest", {"label": "unsafe"}, "harmful"),
    "xstest": ("xstest_prompts.csv", "xstest", {}, "mixed"),
    "harmful-train": ("harmful_prompts/train.json", "json", {}, "harmful"),
    "harmful-val": ("harmful_prompts/val.json", "json", {}, "harmful"),
    "harmful-test": ("harmful_prompts/test.json", "json", {}, "harmful"),
    "harmless-train": ("harmless_prompts/train.json", "json", {}, "benign"),
    "harmless-val": ("harmless_prompts/val.json", "json", {}, "benign"),
    "harmless-test": ("harmless_prompts/test.json", "json", {}, "benign"),
    "advbench": ("advbench/harmful_behaviors.csv", "advbench", {}, "harmful"),  # not shipped: pass a path
    "builtin-harmful": (None, "jsonl", {"label": "harmful"}, "harmful"),
    "builtin-harmless": (None, "jsonl", {"label": "harmless"}, "benign"),
}


def kind_of(spec: str) -> str:
    """What a set measures: harmful | benign | mixed | unknown (for files)."""
    return NAMED[spec][3] if spec in NAMED else "unknown"


def load(spec: str, data: str | None = None, fmt: str | None = None, category: str | None = None,
         label: str | None = None, limit: int | None = None) -> list[Prompt]:
    """Load a named set, a file, or an ``hf:`` dataset. ``category``: HarmBench functional
    category (default ``standard``; ``all`` keeps every row) or, for other files, a category
    filter; ``label``: keep rows with this label (XSTest safe/unsafe, built-in harmful/harmless)."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown prompt format {fmt!r}; choose from {', '.join(FORMATS)}")
    if spec.startswith("hf:"):
        out = _load_hf(spec)
    elif spec in NAMED:
        rel, nfmt, filters, _ = NAMED[spec]
        if rel is None:
            path = BUILTIN
        else:
            d = data_dir(data)
            if d is None:
                raise UserError(f"prompt set {spec!r} needs the data directory ({paths.SHARED / 'data'} "
                                "not found; set --data or PMPC_DATA), or use builtin-harmful / builtin-harmless")
            path = d / rel
            if not path.exists():
                hint = " (AdvBench is not shipped: pass the path of harmful_behaviors.csv)" if spec == "advbench" else ""
                raise UserError(f"prompt set {spec!r}: {path} not found{hint}")
        label = label or filters.get("label")
        out = load_file(path, fmt or nfmt, category=category, label=label)
        default_label = {"harmful": "harmful", "benign": "harmless"}.get(NAMED[spec][3], "")
        for p in out:
            p.source = spec
            p.label = p.label or default_label
    else:
        path = pathlib.Path(spec)
        if not path.exists():
            raise UserError(f"prompt set {spec!r} is neither a file nor a known set ({', '.join(NAMED)})")
        if not path.is_file():
            raise UserError(f"prompt set {spec!r} is a directory, not a prompt file")
        out = load_file(path, fmt, category=category, label=label)
    if not out:
        raise UserError(f"prompt set {spec!r} has no prompts after filtering (category={category}, label={label})")
    return out[:limit] if limit else out


def detect_format(path: pathlib.Path) -> str:
    ext = path.suffix.lower()
    if ext == ".txt":
        return "txt"
    if ext == ".jsonl":
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext == ".csv":
        text = _read_text(path)
        if not text.strip():
            raise MalformedFile(path, 1, "empty file")
        header = text.split("\n", 1)[0]
        cols = next(csv.reader([header]), [])
        cols = [c.strip() for c in cols]
        if "Behavior" in cols and "FunctionalCategory" in cols:
            return "harmbench"
        if "Goal" in cols or ("goal" in cols and ("behavior" in cols or "index" in cols)):
            return "jbb"
        if "goal" in cols:
            return "advbench"
        if "prompt" in cols and "label" in cols:
            return "xstest"
        if "prompt" in cols:
            return "csv"
        raise MalformedFile(path, 1, f"unrecognised CSV header {cols[:6]}: expected AdvBench (goal,target), "
                                     "HarmBench (Behavior,FunctionalCategory), JBB (Goal / goal), "
                                     "XSTest (prompt,label) or a prompt column")
    raise UserError(f"{path}: cannot tell the format from the extension {ext!r}; pass --format "
                    f"({', '.join(FORMATS)})")


def load_file(path, fmt: str | None = None, category: str | None = None, label: str | None = None) -> list[Prompt]:
    path = pathlib.Path(path)
    fmt = fmt or detect_format(path)
    if fmt in ("advbench", "harmbench", "jbb", "xstest", "csv"):
        out = _load_csv(path, fmt, category if fmt == "harmbench" else None)
    elif fmt == "json":
        out = _load_json(path)
    elif fmt == "jsonl":
        out = _load_jsonl(path)
    elif fmt == "txt":
        out = _load_txt(path)
    else:
        raise UserError(f"unknown prompt format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not out:
        raise MalformedFile(path, 1, "no prompts in the file")
    for p in out:
        p.source = p.source or str(path)
    if category and category != "all" and fmt != "harmbench":
        out = [p for p in out if p.category == category]
    if label:
        out = [p for p in out if p.label == label]
    return out


def _read_text(path: pathlib.Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise MalformedFile(path, line, "not valid UTF-8 text") from None


def _load_csv(path, fmt, category):
    text = _read_text(path)
    if not text.strip():
        raise MalformedFile(path, 1, "empty file")
    need = {"advbench": ["goal"], "harmbench": ["Behavior", "FunctionalCategory"], "xstest": ["prompt", "label"],
            "csv": ["prompt"], "jbb": []}[fmt]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [c.strip() for c in next(reader)]
    except csv.Error as e:
        raise MalformedFile(path, 1, f"bad CSV ({e})") from None
    for col in need:
        if col not in header:
            raise MalformedFile(path, 1, f"missing column {col!r} (header: {','.join(header)})")
    if fmt == "jbb":
        if "Goal" not in header and "goal" not in header:
            raise MalformedFile(path, 1, f"missing column 'Goal' (harmful) or 'goal' (benign) (header: {','.join(header)})")
    text_col = {"advbench": "goal", "harmbench": "Behavior", "xstest": "prompt", "csv": "prompt",
                "jbb": "Goal" if "Goal" in header else "goal"}[fmt]
    cat_col = next((c for c in ("FunctionalCategory" if fmt == "harmbench" else "", "category", "Category",
                                "SemanticCategory", "type") if c in header), None)
    id_col = next((c for c in ("BehaviorID", "id", "index", "Index") if c in header), None)
    if fmt == "harmbench" and category is None:
        category = "standard"
    out = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise MalformedFile(path, reader.line_num, f"bad CSV ({e})") from None
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise MalformedFile(path, line, f"{len(row)} fields, the header has {len(header)}")
        rec = dict(zip(header, row))
        t = rec[text_col].strip()
        if not t:
            raise MalformedFile(path, line, f"empty {text_col!r}")
        lab = ""
        if fmt == "xstest":
            lab = rec["label"].strip()
            if lab not in ("safe", "unsafe"):
                raise MalformedFile(path, line, f"label {lab!r} is not safe/unsafe")
        elif fmt == "jbb":
            lab = "harmful" if text_col == "Goal" else "harmless"
        elif fmt in ("advbench", "harmbench"):
            lab = "harmful"
        elif "label" in rec:
            lab = rec["label"].strip()
        cat = rec[cat_col].strip() if cat_col else ""
        if fmt == "harmbench" and category != "all" and cat != category:
            continue
        out.append(Prompt(t, cat, lab, id=rec[id_col].strip() if id_col else str(len(out))))
    if fmt == "harmbench" and not out:
        raise MalformedFile(path, 1, f"no rows with FunctionalCategory {category!r}")
    return out


def _record(obj, path, line, i):
    if isinstance(obj, str):
        t, cat, lab, pid = obj, "", "", str(i)
    elif isinstance(obj, dict):
        field = next((f for f in TEXT_FIELDS if f in obj), None)
        if field is None:
            raise MalformedFile(path, line, f"item {i} has none of the fields {', '.join(TEXT_FIELDS)}")
        t = obj[field]
        if not isinstance(t, str):
            raise MalformedFile(path, line, f"item {i}: {field!r} is not a string")
        cat = str(obj.get("category", obj.get("Category", "")) or "")
        lab = str(obj.get("label", "") or "")
        pid = str(obj.get("id", i))
    else:
        raise MalformedFile(path, line, f"item {i} is a {type(obj).__name__}, expected an object or a string")
    if not t.strip():
        raise MalformedFile(path, line, f"item {i}: empty prompt")
    return Prompt(t.strip(), cat, lab, id=pid)


def _load_json(path):
    text = _read_text(path)
    dec = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if pos >= len(text):
        raise MalformedFile(path, 1, "empty file")
    if text[pos] != "[":
        line = text.count("\n", 0, pos) + 1
        raise MalformedFile(path, line, "expected a JSON list of prompts")
    # decode item by item so that every error names the line of the item
    out, pos, i = [], pos + 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise MalformedFile(path, text.count("\n") + 1, "unterminated list (missing ']')")
        if text[pos] == "]":
            break
        line = text.count("\n", 0, pos) + 1
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise MalformedFile(path, e.lineno, f"invalid JSON ({e.msg})") from None
        out.append(_record(obj, path, line, i))
        pos, i = end, i + 1
    return out


def _load_jsonl(path):
    out = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MalformedFile(path, n, f"invalid JSON ({e.msg})") from None
        out.append(_record(obj, path, n, len(out)))
    return out


def _load_txt(path):
    out = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        t = line.strip()
        if t and not t.startswith("#"):
            out.append(Prompt(t, id=str(len(out))))
    return out


def _load_hf(spec: str) -> list[Prompt]:
    """``hf:DATASET[:SPLIT[:COLUMN]]`` through the ``datasets`` package (optional, online)."""
    parts = spec[3:].split(":")
    name = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    col = parts[2] if len(parts) > 2 else None
    try:
        import datasets
    except ImportError:
        raise UserError(f"{spec}: the Hugging Face 'datasets' package is not installed "
                        "(pip install datasets), or download the file and pass its path") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown dataset, gated ...: one line for the user
        raise UserError(f"{spec}: cannot load dataset ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    col = col or next((c for c in TEXT_FIELDS if c in ds.column_names), None)
    if col is None or col not in ds.column_names:
        raise UserError(f"{spec}: no prompt column; it has {', '.join(ds.column_names)} (use hf:{name}:{split}:COLUMN)")
    return [Prompt(str(r[col]).strip(), str(r.get("category", "") or ""), id=str(i), source=spec)
            for i, r in enumerate(ds) if str(r[col]).strip()]
