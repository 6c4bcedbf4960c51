"""Reading what a user hands in, with limits: JSON, JSON lines, Python-syntax literals, CSV
tables and HTML fragments kept in data files.

Every input file tomsparse reads (task files, ToMi files, score-prompt files, point records,
report sections) goes through one of these readers, so that a hostile or broken file ends in
one ``UserError`` naming it, never in a RecursionError, a MemoryError or gigabytes of memory:

* sizes are checked before a file is read whole (``read_text``);
* nesting is counted on the text before it is parsed (``json_depth``, the Python source
  checks): a JSON value or a Python literal nested more than ``MAX_DEPTH`` levels is refused;
* a Python-syntax file is scanned before ``ast`` sees it: its tokens (about 1 KB of memory
  each once parsed), its operators (a literal needs none but a sign) and its nesting are
  counted, and it is never executed;
* integers are at most ``MAX_INT_BITS`` bits (a 16,000-bit one cannot even be printed);
* an HTML fragment read from a data file keeps only an allow-list of tags and attributes
  (``sanitize_html``): anything else is shown as text, so a ``<script>`` planted there never
  runs in a report.
"""

from __future__ import annotations

import ast
import html
import json
import os
import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterable

from tomsparse.errors import UserError

MAX_DEPTH = 64                     # containers inside containers, in any input
MAX_INT_BITS = 64                  # integers in an input file
MAX_TEXT_BYTES = 64 * 2 ** 20      # a JSON, JSONL or text input
MAX_CSV_BYTES = 512 * 2 ** 20      # a CSV table (pandas reads it without amplification)
MAX_PY_TOKENS = 200_000            # a Python-syntax input: ast holds about 1 KB per token
MAX_PY_OPERATORS = 1_000           # +, -, *, ... : literals need only a sign now and then
MAX_INFLATION = 20                 # a compressed entry of a torch archive, at most (x its size)


def _size_text(n: int) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def read_text(path: str | os.PathLike, what: str = "input file",
              max_bytes: int = MAX_TEXT_BYTES, fix: str = "", kind: str = "") -> str:
    """The UTF-8 text of ``path``, a ``what`` (e.g. "task file"); a missing, unreadable,
    non-UTF-8 file or one larger than ``max_bytes`` is a UserError naming it (``kind``, e.g.
    "JSON", says what text it should have been)."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        if path.is_dir():
            raise UserError(f"{path} is a folder; give the path of a {what}")
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file{tail}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc}){tail}") from None
    if size > max_bytes:
        raise UserError(f"{path}: {_size_text(size)}, more than the {_size_text(max_bytes)} a "
                        f"{what} may hold; split it, or check that it is the file you meant")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc}){tail}") from None
    if len(data) > max_bytes:  # it grew while being read
        raise UserError(f"{path}: more than the {_size_text(max_bytes)} a {what} may hold")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid {kind or 'text'} (not UTF-8 text, byte "
                        f"{exc.start}); a {what} is UTF-8 text{tail}") from None


# ------------------------------------------------------------------ JSON

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}()]")


def _max_depth(code: str, limit: int) -> int:
    """The deepest bracket nesting of ``code`` (strings already removed), counting no further
    than ``limit + 1``."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(code):
        if match.group() in "[{(":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth = max(depth - 1, 0)
    return deepest


def json_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """How deeply the arrays and objects of a JSON text nest (counted on the text, before
    parsing; no further than ``limit + 1``)."""
    return _max_depth(_JSON_STRING.sub('""', text), limit)


class _BigInt(Exception):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > 20:  # 2**64 has 20 digits
        raise _BigInt(text)
    value = int(text)
    if value.bit_length() > MAX_INT_BITS:
        raise _BigInt(text)
    return value


def parse_json(text: str, where: str, max_depth: int = MAX_DEPTH, fix: str = "") -> Any:
    """The JSON value in ``text``; ``where`` (a file, or "file: line n") names it in the one
    line a damaged, too deeply nested or oversized value raises (a UserError)."""
    tail = f"; {fix}" if fix else ""
    depth = json_depth(text, max_depth)
    if depth > max_depth:
        raise UserError(f"{where}: nested more than {max_depth} levels deep (arrays or objects "
                        f"inside each other); not a file tomsparse reads{tail}")
    try:
        return json.loads(text, parse_int=_parse_int)
    except _BigInt as exc:
        digits = str(exc.args[0])
        raise UserError(f"{where}: an integer of {len(digits.lstrip('-'))} digits "
                        f"({digits[:12]}...); numbers in an input file fit in "
                        f"{MAX_INT_BITS} bits{tail}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}){tail}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise UserError(f"{where}: not a JSON value tomsparse can read "
                        f"({type(exc).__name__}){tail}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_TEXT_BYTES,
              max_depth: int = MAX_DEPTH, fix: str = "") -> Any:
    """The JSON value in the file ``path`` (``read_text`` then ``parse_json``)."""
    return parse_json(read_text(path, what, max_bytes, fix, kind="JSON"), str(path), max_depth,
                      fix)


def read_jsonl(path: str | os.PathLike, what: str = "JSON lines file",
               max_bytes: int = MAX_TEXT_BYTES, max_depth: int = MAX_DEPTH
               ) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSON-lines file, each checked as
    ``parse_json`` checks a file; a bad line is a UserError naming the file and the line."""
    text = read_text(path, what, max_bytes, kind="JSON")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append((number, parse_json(line, f"{path}: line {number}", max_depth)))
    return rows


# ------------------------------------------------------------------ Python-syntax literals

_PY_SKIPPED = re.compile(
    r"#[^\n]*"
    r"|[rRbBuUfF]{0,2}(?:'''(?:[^'\\]|\\.|'(?!''))*'''"
    r'|"""(?:[^"\\]|\\.|"(?!""))*"""'
    r"|'(?:[^'\\\n]|\\.)*'"
    r'|"(?:[^"\\\n]|\\.)*")', re.S)
_PY_TOKEN = re.compile(r"\w+|[^\w\s]")
_PY_OPERATOR = re.compile(r"\*\*|//|<<|>>|[-+*/%@&|^~<>!]|\b(?:not|and|or|if|else|lambda|"
                          r"await|yield|for|in|is)\b")


def check_python_source(text: str, where: str, max_tokens: int = MAX_PY_TOKENS,
                        max_operators: int = MAX_PY_OPERATORS,
                        max_depth: int = MAX_DEPTH) -> None:
    """Refuse, before ``ast`` parses it, a Python-syntax data file whose parse would be huge
    or deep: more than ``max_tokens`` tokens, ``max_operators`` operators, or brackets nested
    more than ``max_depth`` levels. Strings and comments are skipped."""
    code, strings = _PY_SKIPPED.subn(" 0 ", text)
    depth = _max_depth(code, max_depth)
    if depth > max_depth:
        raise UserError(f"{where}: brackets nested more than {max_depth} levels deep; a data "
                        "file of literals needs a few")
    operators = 0
    for _ in _PY_OPERATOR.finditer(code):
        operators += 1
        if operators > max_operators:
            raise UserError(f"{where}: more than {max_operators:,} operators; a data file holds "
                            "literal values (strings, numbers, lists, dicts), not expressions")
    tokens = strings
    for _ in _PY_TOKEN.finditer(code):
        tokens += 1
        if tokens > max_tokens:
            raise UserError(f"{where}: more than {max_tokens:,} tokens; a Python-syntax file "
                            "this large takes about 1 GB of memory per million tokens to "
                            "read: write it as .json instead")


def parse_python(text: str, where: str) -> ast.Module:
    """``ast.parse`` of a checked Python-syntax data file (``check_python_source`` first);
    any failure of the parser is a UserError naming ``where``. Nothing is executed."""
    check_python_source(text, where)
    try:
        return ast.parse(text, filename=where)
    except SyntaxError as exc:
        raise UserError(f"{where}: line {exc.lineno}: not valid Python ({exc.msg})") from None
    except (RecursionError, MemoryError) as exc:
        raise UserError(f"{where}: too complex to parse ({type(exc).__name__}); a data file "
                        "holds literal values only") from None
    except ValueError as exc:  # e.g. a NUL byte
        raise UserError(f"{where}: not valid Python ({exc})") from None


def literal_value(node: ast.AST, where: str) -> Any:
    """The literal ``node`` stands for (``ast.literal_eval``), checked by ``check_value``.
    Raises ValueError for a node that is not a literal (the caller says where), a UserError
    for a literal too large or too deep."""
    try:
        value = ast.literal_eval(node)
    except (RecursionError, MemoryError):
        raise ValueError("too complex") from None
    except (TypeError, SyntaxError) as exc:
        raise ValueError(str(exc)) from None
    check_value(value, where)
    return value


def _key_text(key) -> str:
    return f"[{key!r}]"


def check_value(value: Any, where: str, max_depth: int = MAX_DEPTH,
                max_int_bits: int = MAX_INT_BITS) -> None:
    """Refuse a parsed value nested deeper than ``max_depth`` or holding an integer of more
    than ``max_int_bits`` bits; the message names the place (``where`` and the path in
    the value, e.g. ``['s1'][3]['NUMBER']``)."""
    todo = [(value, 0, "")]
    while todo:
        item, depth, path = todo.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if item.bit_length() > max_int_bits:
                raise UserError(f"{where}{': ' + path if path else ''}: an integer of "
                                f"{item.bit_length():,} bits; numbers in an input file fit "
                                f"in {max_int_bits} bits")
            continue
        if isinstance(item, (list, tuple, set, frozenset, dict)):
            if depth >= max_depth:
                raise UserError(f"{where}: nested more than {max_depth} levels deep")
            if isinstance(item, dict):
                for key, inner in item.items():
                    todo.append((key, depth + 1, path + "(key)"))
                    todo.append((inner, depth + 1, path + _key_text(key)))
            else:
                todo.extend((inner, depth + 1, f"{path}[{i}]") for i, inner in enumerate(item))


# ------------------------------------------------------------------ CSV


def read_csv(path: str | os.PathLike, what: str = "CSV table", max_bytes: int = MAX_CSV_BYTES,
             fix: str = "restore it or write it again", **read_options):
    """``pandas.read_csv(path, **read_options)`` of a file at most ``max_bytes`` long; a
    missing, oversized or unreadable table is a UserError naming it, ``what`` and ``fix``."""
    import pandas as pd

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: missing; expected {what}; {fix}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc}); {fix}") from None
    if size > max_bytes:
        raise UserError(f"{path}: {_size_text(size)}, more than the {_size_text(max_bytes)} "
                        f"{what} may hold; {fix}")
    try:
        return pd.read_csv(path, **read_options)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; expected {what}; {fix}") from None
    except (OSError, ValueError, UnicodeDecodeError, MemoryError) as exc:
        # EmptyDataError, ParserError, an oversized field
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV table ({first[:160]}); expected {what}; "
                        f"{fix}") from None


# ------------------------------------------------------------------ HTML from data files

# Tags a data file's HTML fragment may keep (what tomsparse's own pages put there: paragraphs,
# lists, tables, headings, embedded PNGs), and the attributes each may carry.
SAFE_TAGS = {"p", "ul", "ol", "li", "table", "thead", "tbody", "tfoot", "tr", "th", "td",
             "caption", "h2", "h3", "h4", "h5", "b", "i", "em", "strong", "code", "pre", "br",
             "span", "div", "small", "sub", "sup", "details", "summary", "img", "hr"}
_VOID = {"br", "img", "hr"}
_SAFE_ATTRIBUTES = {"class", "colspan", "rowspan", "border", "alt", "title", "halign",
                    "valign", "open"}
_SAFE_STYLE = re.compile(r"^\s*text-align:\s*(left|right|center);?\s*$")
_PNG_DATA = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/=\s]*$")
_DROPPED_WITH_CONTENT = {"script", "style", "iframe", "object", "embed", "template",
                         "noscript", "svg", "math"}


class _Sanitizer(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.skipping = 0

    def _attrs(self, tag: str, attrs: Iterable[tuple[str, str | None]]) -> str:
        kept = []
        for name, value in attrs:
            name = name.lower()
            value = "" if value is None else value
            if name == "src" and tag == "img" and _PNG_DATA.match(value):
                kept.append(f' src="{html.escape(value, quote=True)}"')
            elif name == "style" and _SAFE_STYLE.match(value):
                kept.append(f' style="{html.escape(value, quote=True)}"')
            elif name in _SAFE_ATTRIBUTES:
                kept.append(f' {name}="{html.escape(value, quote=True)}"')
        return "".join(kept)

    def handle_starttag(self, tag, attrs):
        if tag in _DROPPED_WITH_CONTENT:
            if tag not in _VOID:
                self.skipping += 1
            return
        if self.skipping:
            return
        if tag in SAFE_TAGS:
            self.out.append(f"<{tag}{self._attrs(tag, attrs)}>")
            if tag not in _VOID:
                self.open.append(tag)
        else:
            self.out.append(html.escape(self.get_starttag_text() or f"<{tag}>"))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in SAFE_TAGS and tag not in _VOID and self.open and self.open[-1] == tag \
                and not self.skipping:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in _DROPPED_WITH_CONTENT:
            self.skipping = max(self.skipping - 1, 0)
            return
        if self.skipping:
            return
        if tag in SAFE_TAGS and tag in self.open:
            while self.open:
                top = self.open.pop()
                self.out.append(f"</{top}>")
                if top == tag:
                    break
        elif tag not in SAFE_TAGS:
            self.out.append(html.escape(f"</{tag}>"))

    def handle_data(self, data):
        if not self.skipping:
            self.out.append(html.escape(data, quote=False))

    def handle_comment(self, data):
        pass

    def handle_decl(self, decl):
        pass

    def handle_pi(self, data):
        pass

    def unknown_decl(self, data):
        pass

    def result(self) -> str:
        self.close()
        self.out.extend(f"</{tag}>" for tag in reversed(self.open))
        self.open.clear()
        return "".join(self.out)


def sanitize_html(fragment: str) -> str:
    """``fragment`` re-written with only ``SAFE_TAGS`` and their safe attributes (an ``img``
    only as an embedded PNG, a ``style`` only as text alignment); other markup is escaped and
    shown as text, the content of ``script``, ``style`` and the like dropped, comments
    dropped, every tag closed. For HTML read back from a data file."""
    parser = _Sanitizer()
    parser.feed(fragment)
    return parser.result()


# ------------------------------------------------------------------ torch archives


def check_torch_archive(path: str | os.PathLike, max_bytes: int | None = None,
                        what: str = "torch file") -> None:
    """Refuse, before ``torch.load`` inflates it, a torch zip archive (``torch.save``'s
    format) whose entries declare more than ``max_bytes`` together (the tensors it should
    hold, with room to spare), or that holds a compressed entry inflating more than
    ``MAX_INFLATION`` times (``torch.save`` stores tensors uncompressed: a deflated 2 MB entry
    can ask for gigabytes). A file in the legacy format is stored as is and passes."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable {what} ({exc})") from None
    total = sum(e.file_size for e in entries)
    if max_bytes is not None and total > max_bytes:
        raise UserError(f"{path}: its entries unpack to {_size_text(total)}, more than the "
                        f"{_size_text(max_bytes)} its tensors take; refused before reading "
                        "(the file is not what it should hold)")
    for entry in entries:
        if (entry.compress_type != zipfile.ZIP_STORED and entry.file_size > 1 << 20
                and entry.file_size > MAX_INFLATION * max(entry.compress_size, 1)):
            raise UserError(f"{path}: entry {entry.filename!r} inflates "
                            f"{_size_text(entry.compress_size)} to {_size_text(entry.file_size)}; "
                            "torch.save stores tensors uncompressed, so the file was not "
                            "written by it: refused before reading")
