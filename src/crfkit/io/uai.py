"""UAI model files (the format of the UAI inference competitions), evidence and results.

A model file is a ``MARKOV`` network::

    MARKOV
    3                 # number of variables N
    2 2 3             # cardinality of each variable
    3                 # number of factors
    1 0               # each factor's scope: arity, then variable indices
    2 0 1
    2 1 2
                      # then, per factor, the number of entries and the table, the last
    2                 # variable of the scope changing fastest
     0.436 0.564
    4
     0.128 0.872
     0.920 0.080
    6
     ...

(``#`` comments are not part of the format; they are accepted and ignored here.)  Factor
values are ``exp(score)``; crfkit reads the scores ``log(value)`` into a
:class:`~crfkit.GraphMRF` with unary ``[N, L]``, ``L`` the largest cardinality, and per-edge
tables ``[E, L, L]`` (float64 by default).  Several factors on the same scope (in either
variable order) are summed in score space; factors on no variable add a constant.  Only
unary and pairwise factors are supported: a factor on three or more variables is refused
with a message that says so.  ``BAYES`` networks are refused.

**Zeros and forbidden labels.** A factor value ``0`` is a score of ``-inf``; ``GraphMRF``
needs finite scores, so every ``-inf`` becomes one finite *hard score* per model,
:attr:`UAIModel.hard_score`, low enough that it decides nothing but feasibility::

    hard_score = min(0, m) - R - N * log(L) - 64

where ``R`` is the sum over the model's unary rows and edge tables of (largest - smallest
finite entry) and ``m`` the smallest finite entry.  Any labelling that uses a zero entry then
scores at least 64 below *every* labelling that uses none, and all such labellings together
carry less than ``e^-64`` of the probability of the best allowed one.  Labels beyond a
variable's cardinality (``l >= card_i``) are forbidden the same way (unary entry =
``hard_score``; the pairwise entries that involve them are ``0``).  Evidence fixes a variable
by giving its other labels the hard score.  Writing turns entries equal to ``hard_score``
back into ``0``, so files round-trip (values to about one unit in the last place, through
``log`` and ``exp``).

Evidence files (``.evid``): ``n  var val  var val ...`` (UAI 2014), or the older form
with a leading number of samples (only ``1`` sample is accepted).

Result files: ``MAP`` (``MAP`` then ``N x_0 ... x_{N-1}``) and ``MAR`` (``MAR`` then ``N``
followed by, per variable, its cardinality and its probabilities).

Errors in a file raise :class:`UAIFormatError` (a ``ValueError``) naming the file and the line.
Every write is atomic (a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import CRFShapeError, CRFTypeError, CRFValueError, fmt_shape
from ..models.graph import GraphMRF

__all__ = [
    "UAIFormatError",
    "UAIModel",
    "read_uai",
    "parse_uai",
    "write_uai",
    "format_uai",
    "read_evidence",
    "parse_evidence",
    "apply_evidence",
    "write_map_result",
    "write_mar_result",
    "read_map_result",
    "read_mar_result",
    "hard_score_for",
    "atomic_write_text",
]

HARD_MARGIN = 64.0
"""How far (in score) a labelling that uses a zero factor value lies below every other."""


class UAIFormatError(CRFValueError):
    """A malformed UAI model, evidence or result file (the message names the file and line)."""


@dataclass
class UAIModel:
    """A model read from (or to be written to) a UAI file.

    Attributes:
        mrf: :class:`~crfkit.GraphMRF` with unary ``[N, L]``, ``edges [E, 2]`` and per-edge
            tables ``[E, L, L]`` (scores = log factor values).
        cardinalities: ``[N]`` long, each variable's number of labels (``<= L``).
        hard_score: the finite score that stands for a zero factor value or a forbidden label
            (``None`` when the model has none: then nothing is written as ``0``).
        constant: the summed log of the factors on no variable (adds to every score).
    """

    mrf: GraphMRF
    cardinalities: torch.Tensor
    hard_score: float | None = None
    constant: float = 0.0

    @property
    def num_variables(self) -> int:
        return self.mrf.num_nodes

    def score(self, labels: torch.Tensor) -> torch.Tensor:
        """Log of the product of factor values at ``labels [N]`` (includes ``constant``)."""
        return self.mrf.score(labels) + self.constant

    def is_feasible(self, labels: torch.Tensor) -> bool:
        """Whether ``labels [N]`` avoid every zero factor value and forbidden label."""
        if self.hard_score is None:
            return True
        labels = labels.long()
        un = self.mrf.unary.gather(-1, labels[:, None]).squeeze(-1)
        if bool((un <= self.hard_score).any()):
            return False
        e = self.mrf.edges
        if e.shape[0] == 0:
            return True
        tab = self.mrf.edge_tables()
        pw = tab[torch.arange(e.shape[0]), labels[e[:, 0]], labels[e[:, 1]]]
        return not bool((pw <= self.hard_score).any())


# --------------------------------------------------------------------------- writing helpers
from .atomic import atomic_write_text  # noqa: E402  (re-exported)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- tokens
class _Tokens:
    """Whitespace tokens of a text with their line numbers; ``#`` starts a comment."""

    def __init__(self, text: str, name: str):
        self.name = name
        toks, lines = [], []
        last = 1
        for k, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0]
            for t in line.split():
                toks.append(t)
                lines.append(k)
            last = k
        self.toks, self.lines, self.pos, self.last_line = toks, lines, 0, last

    def error(self, msg: str, line: int | None = None) -> UAIFormatError:
        if line is None:
            line = self.lines[self.pos] if self.pos < len(self.toks) else self.last_line
        return UAIFormatError(f"{self.name}, line {line}: {msg}")

    def line(self) -> int:
        return self.lines[self.pos] if self.pos < len(self.toks) else self.last_line

    def at_end(self) -> bool:
        return self.pos >= len(self.toks)

    def next(self, what: str) -> tuple[str, int]:
        if self.pos >= len(self.toks):
            raise UAIFormatError(
                f"{self.name}, line {self.last_line} (end of file): expected {what}, the file ended"
            )
        t, ln = self.toks[self.pos], self.lines[self.pos]
        self.pos += 1
        return t, ln

    def int(self, what: str, lo: int | None = None, hi: int | None = None) -> int:
        t, ln = self.next(what)
        try:
            v = int(t)
        except ValueError:
            raise self.error(f"expected {what} (an integer), got {t!r}", ln) from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise self.error(f"expected {what} {rng}, got {v}", ln)
        return v


_DECIMAL = re.compile(r"^\+?(\d+\.?\d*|\.\d+)[eE]([+-]?\d+)$")


def _log_value(t: str) -> float:
    """``log`` of a non-negative number token; exact for values that underflow float64."""
    v = float(t)
    if 1e-300 <= v < math.inf:
        return math.log(v)
    if v >= 0.0:  # zero, subnormal, or beyond float64's range: read the decimal exponent
        m = _DECIMAL.match(t.strip())
        if m is not None:
            mant = float(m.group(1))
            if mant > 0.0:
                exp10 = int(m.group(2))
                if abs(exp10) > 100_000:
                    raise OverflowError(f"decimal exponent {exp10} is beyond +-100000")
                return math.log(mant) + exp10 * math.log(10.0)
        if v > 0.0:
            return math.log(v)
    return -math.inf


def _values_slow(tokens: _Tokens, count: int, what: str) -> np.ndarray:
    out = np.empty(count, dtype=np.float64)
    for k in range(count):
        t, ln = tokens.next(f"{what}: entry {k + 1} of {count}")
        try:
            v = float(t)
        except ValueError:
            raise tokens.error(f"expected a number in {what}, got {t!r}", ln) from None
        if v < 0:
            raise tokens.error(
                f"expected factor values >= 0 in {what} (values are exp(score)), got {t}", ln
            )
        if math.isnan(v) or (math.isinf(v) and _DECIMAL.match(t) is None):
            raise tokens.error(f"expected a finite number in {what}, got {t!r}", ln)
        try:
            out[k] = _log_value(t)
        except OverflowError as err:
            raise tokens.error(f"expected a factor value within float range in {what}, got {t!r} ({err})", ln) from None
    return out


def _values(tokens: _Tokens, count: int, what: str) -> np.ndarray:
    """``log`` of the next ``count`` factor values (vectorised; token by token on trouble)."""
    start = tokens.pos
    chunk = tokens.toks[start : start + count]
    if len(chunk) == count:
        try:
            v = np.array(chunk, dtype=np.float64)
        except ValueError:
            v = None
        if v is not None and bool(((v >= 1e-300) & (v < np.inf)).all()):
            tokens.pos = start + count
            return np.log(v)
    return _values_slow(tokens, count, what)


# --------------------------------------------------------------------------- reading
def hard_score_for(
    unary: np.ndarray, tables: np.ndarray, unary_mask: np.ndarray, table_mask: np.ndarray
) -> float:
    """The hard score of a model (module docstring): ``min(0, m) - R - N log L - 64``.

    ``unary [N, L]`` and ``tables [E, L, L]`` scores (``-inf`` allowed); the masks say which
    entries are real (within the cardinalities).
    """
    # Proof that the hard score h = min(0, m) - R - N log L - 64 keeps every bound valid and
    # decides only feasibility.  Let F be a feasible labelling (no zero entry) and G one that
    # uses k >= 1 zero entries.  Every term of score(F) is >= its term's smallest finite entry,
    # so score(F) >= sum_t min_t.  score(G) has k terms equal to h and every other term <= its
    # largest entry max_t, so score(G) <= k h + sum_t max_t - (min over the replaced terms).
    # With max_t = min_t + spread_t and sum_t spread_t = R:
    #   score(G) - score(F) <= k h + R - sum_{replaced} max_t <= h + R - min(0, m) (as k h <= h
    #   and every replaced max_t >= m >= min(0, m)) = -N log L - 64 < -64.
    # Hence (i) a maximiser is feasible whenever a feasible labelling exists, (ii) the
    # probability of all infeasible labellings together is below L^N e^{-N log L - 64} = e^-64
    # times the best feasible one, and (iii) any upper bound on the finite model (the dual
    # certificate, the LP) is an upper bound on max score over feasible labellings, because the
    # feasible labellings score the same in the finite model as in the -inf model.  Tested
    # against enumeration in tests/test_uai.py and tests/test_rounding.py.
    N, L = unary.shape
    R, m = 0.0, 0.0
    for x, mask in ((unary, unary_mask), (tables, table_mask)):
        if x.size == 0:
            continue
        flat = np.where(mask & np.isfinite(x), x, np.nan).reshape(x.shape[0], -1)
        ok = ~np.isnan(flat).all(axis=1)
        if not ok.any():
            continue
        hi = np.nanmax(flat[ok], axis=1)
        lo = np.nanmin(flat[ok], axis=1)
        R += float((hi - lo).sum())
        m = min(m, float(lo.min()))
    return m - R - N * math.log(max(L, 1)) - HARD_MARGIN


MAX_DENSE_ENTRIES = 1 << 28
"""The largest ``N * L + E * L * L`` (dense unary and per-edge tables) a model may need (2 GiB in float64)."""


def _read_cardinalities(tk: _Tokens) -> tuple[int, np.ndarray]:
    """The number of variables and their cardinalities, checked against the lines they are on.

    The cardinalities must not end in the middle of a line (a wrong variable count would
    otherwise shift every later number and surface as a different error further down).
    """
    n_line = tk.line()
    N = tk.int("the number of variables", lo=1)
    left = len(tk.toks) - tk.pos
    if N > left:
        raise tk.error(
            f"expected the cardinalities of {N} variables, the file has only {left} numbers left "
            "(is the number of variables right?)",
            n_line,
        )
    c_line = tk.line()
    cards = np.array([tk.int(f"the cardinality of variable {i}", lo=1) for i in range(N)], dtype=np.int64)
    last = tk.lines[tk.pos - 1]
    card_lines = tk.lines[tk.pos - N : tk.pos]
    if last != c_line and card_lines.count(last) == 1 and card_lines.count(c_line) > 1:
        raise tk.error(
            f"expected {N} cardinalities (the number of variables on line {n_line}), got "
            f"{card_lines.count(c_line)} on line {c_line}",
            c_line,
        )
    if not tk.at_end() and tk.lines[tk.pos] == last:
        on_line = sum(1 for ln in tk.lines if ln == last)
        raise tk.error(
            f"expected {N} cardinalities (the number of variables on line {n_line}), got more: "
            f"line {last} holds {on_line} numbers" + (f" after line {c_line}" if last != c_line else ""),
            last,
        )
    return N, cards


def _check_factor_count(tk: _Tokens, F: int, F_line: int, err: UAIFormatError) -> None:
    """On an error after the header, say so if the number of factors (line ``F_line``) is wrong.

    Scope lines follow the factor count, one per factor (``k v_1 ... v_k`` on one line); if the
    run of such lines is not ``F`` long, the header is the likely culprit.
    """
    by_line: dict[int, list[str]] = {}
    for t, ln in zip(tk.toks, tk.lines):
        if ln > F_line:
            by_line.setdefault(ln, []).append(t)
    count = 0
    for ln in sorted(by_line):
        toks = by_line[ln]
        try:
            vals = [int(t) for t in toks]
        except ValueError:
            break
        if vals[0] != len(vals) - 1 or (count >= F and len(vals) == 1):
            break
        count += 1
    if count != F and count > 0:
        raise UAIFormatError(
            f"{tk.name}, line {F_line}: expected the number of factors to match the {count} scope lines "
            f"that follow it, got {F} ({err})"
        ) from None


def _read_scopes(tk: _Tokens, N: int) -> tuple[list[list[int]], int, int]:
    """The factor count and the scopes; returns ``(scopes, F, F_line)``."""
    F_line = tk.line()
    F = tk.int("the number of factors", lo=0)
    left = len(tk.toks) - tk.pos
    if F > left:
        raise tk.error(f"expected at most {left} factors (the tokens left in the file), got {F}", F_line)
    scopes = []
    try:
        for f in range(F):
            ln = tk.line()
            k = tk.int(f"the number of variables of factor {f}", lo=0, hi=N)
            scope = [tk.int(f"a variable index of factor {f}", lo=0, hi=N - 1) for _ in range(k)]
            if len(set(scope)) != k:
                raise tk.error(f"factor {f} has the same variable twice in its scope {scope}", ln)
            if k > 2:
                raise tk.error(
                    f"factor {f} has arity {k} (variables {', '.join(map(str, scope))}): crfkit's "
                    "models are pairwise only (factors on one or two variables; higher-order factors are "
                    "not supported)",
                    ln,
                )
            scopes.append(scope)
    except UAIFormatError as err:
        _check_factor_count(tk, F, F_line, err)
        raise
    return scopes, F, F_line


def _read_table(tk: _Tokens, f: int, scope: list[int], cards: np.ndarray, F: int, F_line: int) -> np.ndarray:
    """Factor ``f``'s table entries (``log`` of the values), the count checked against its scope."""
    expected = int(np.prod([cards[v] for v in scope])) if scope else 1
    ln = tk.line()
    try:
        count = tk.int(f"the number of entries of factor {f}'s table", lo=0)
    except UAIFormatError as err:
        _check_factor_count(tk, F, F_line, err)
        if f == 0:
            raise
        raise UAIFormatError(f"{err} (is factor {f - 1}'s table, before it, truncated or too long?)") from None
    if count != expected:
        _check_factor_count(tk, F, F_line, tk.error(f"factor {f}'s table size {count} != {expected}", ln))
        shape = " x ".join(str(int(cards[v])) for v in scope) or "a constant"
        hint = f" (is factor {f - 1}'s table, before it, truncated or too long?)" if f else ""
        raise tk.error(
            f"factor {f}'s table should have {expected} entries (scope {scope}: {shape}), got {count}{hint}", ln
        )
    left = len(tk.toks) - tk.pos
    if count > left:
        err = tk.error(
            f"expected factor {f}'s {count} table entries (declared on line {ln}), the file ended after {left}",
            tk.last_line,
        )
        _check_factor_count(tk, F, F_line, err)
        raise err
    vals = _values(tk, count, f"factor {f}'s table")
    if not scope and vals[0] == -math.inf:
        raise tk.error(f"factor {f} (no variables) is 0: every labelling has probability 0", ln)
    return vals


def _read_tables(tk: _Tokens, scopes, cards: np.ndarray, F: int, F_line: int):
    """Every table, summed per scope: ``(unary [N, L], edge list, tables [E][L, L], constant)``."""
    N, L = len(cards), int(cards.max())
    unary = np.zeros((N, L), dtype=np.float64)
    edge_index: dict[tuple[int, int], int] = {}
    edge_list: list[tuple[int, int]] = []
    tables: list[np.ndarray] = []
    constant = 0.0
    for f, scope in enumerate(scopes):
        vals = _read_table(tk, f, scope, cards, F, F_line)
        if not scope:
            constant += float(vals[0])
        elif len(scope) == 1:
            unary[scope[0], : cards[scope[0]]] += vals
        else:
            i, j = scope
            tab = vals.reshape(int(cards[i]), int(cards[j]))
            key = (min(i, j), max(i, j))
            if key not in edge_index:
                edge_index[key] = len(edge_list)
                edge_list.append((i, j))
                tables.append(np.zeros((L, L), dtype=np.float64))
            e = edge_index[key]
            if edge_list[e] != (i, j):
                tab, i, j = tab.T, j, i
            tables[e][: cards[i], : cards[j]] += tab
    if not tk.at_end():
        raise tk.error(f"expected the end of the file after {F} factor tables, got {tk.toks[tk.pos]!r}")
    return unary, edge_list, tables, constant


def _assemble(name: str, cards: np.ndarray, unary, edge_list, tables, constant: float, dtype) -> UAIModel:
    """Check that no variable or edge is all zeros; replace the zeros by the hard score; build the model."""
    N, L = unary.shape
    E = len(edge_list)
    unary_mask = np.arange(L)[None, :] < cards[:, None]
    edges = np.array(edge_list, dtype=np.int64).reshape(E, 2)
    tab = np.stack(tables) if E else np.zeros((0, L, L), dtype=np.float64)
    table_mask = unary_mask[edges[:, 0]][:, :, None] & unary_mask[edges[:, 1]][:, None, :]
    for i in range(N):
        if not np.isfinite(unary[i, : cards[i]]).any():
            raise UAIFormatError(
                f"{name}: variable {i} has no label with a non-zero factor value "
                "(the model has probability 0 everywhere)"
            )
    for e in range(E):
        if not np.isfinite(tab[e][table_mask[e]]).any():
            i, j = edge_list[e]
            raise UAIFormatError(
                f"{name}: the factors on ({i}, {j}) are 0 everywhere (the model has probability 0 everywhere)"
            )
    hard = None
    if (not unary_mask.all()) or (not np.isfinite(unary).all()) or (not np.isfinite(tab).all()):
        hard = hard_score_for(unary, tab, unary_mask, table_mask)
        unary = np.where(unary_mask, unary, -math.inf)
        unary[~np.isfinite(unary)] = hard
        tab = np.where(table_mask, tab, 0.0)
        tab[~np.isfinite(tab)] = hard
    mrf = GraphMRF(torch.from_numpy(unary).to(dtype), torch.from_numpy(edges), torch.from_numpy(tab).to(dtype))
    if hard is not None and dtype != torch.float64:
        hard = float(torch.tensor(hard, dtype=dtype))
    return UAIModel(mrf=mrf, cardinalities=torch.from_numpy(cards), hard_score=hard, constant=constant)


def parse_uai(text: str, name: str = "<string>", *, dtype: torch.dtype = torch.float64) -> UAIModel:
    """Parse the text of a UAI ``MARKOV`` model file (see the module docstring)."""
    tk = _Tokens(text, name)
    kind, ln = tk.next("the network type MARKOV")
    if kind.upper() == "BAYES":
        raise tk.error("BAYES networks are not supported: crfkit reads MARKOV networks only", ln)
    if kind.upper() != "MARKOV":
        raise tk.error(f"expected the network type MARKOV, got {kind!r}", ln)
    N, cards = _read_cardinalities(tk)
    scopes, F, F_line = _read_scopes(tk, N)
    L = int(cards.max())
    pairs = {tuple(sorted(sc)) for sc in scopes if len(sc) == 2}
    dense = N * L + len(pairs) * L * L
    if dense > MAX_DENSE_ENTRIES:
        raise tk.error(
            f"expected a model whose dense tables (N*L + E*L*L) fit in {MAX_DENSE_ENTRIES} entries, got "
            f"{dense} (N = {N}, E = {len(pairs)}, largest cardinality L = {L})",
            tk.line(),
        )
    unary, edge_list, tables, constant = _read_tables(tk, scopes, cards, F, F_line)
    return _assemble(name, cards, unary, edge_list, tables, constant, dtype)


def _read_text(path, what: str) -> str:
    """The text of a UAI-family file; a file that is not UTF-8 text gets a one-line error naming it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UAIFormatError(
            f"{path}, line {line}: expected a {what} (UTF-8 text), got byte 0x{raw[err.start]:02x} at offset "
            f"{err.start}, which is not text (a binary or non-UTF-8 file?)"
        ) from None


def read_uai(path, *, dtype: torch.dtype = torch.float64) -> UAIModel:
    """Read a UAI ``MARKOV`` model file into a :class:`UAIModel` (see the module docstring)."""
    path = os.fspath(path)
    return parse_uai(_read_text(path, "UAI model file"), name=path, dtype=dtype)


# --------------------------------------------------------------------------- writing
def _fmt_exp(s: float, hard: float | None) -> str:
    if hard is not None and s <= hard:
        return "0"
    if -700.0 < s < 700.0:
        return repr(math.exp(s))
    k = math.floor(s / math.log(10.0))
    mant = math.exp(s - k * math.log(10.0))
    if mant >= 10.0:  # rounding at the edge
        mant, k = mant / 10.0, k + 1
    return f"{mant!r}e{k:+d}"


def _as_uai_model(model) -> UAIModel:
    if isinstance(model, UAIModel):
        return model
    if isinstance(model, GraphMRF):
        if model.batched:
            raise CRFShapeError(
                "expected one model (unary [N, L]) to write as UAI, "
                f"got a batch of {model.batch_size}"
            )
        N, L = model.num_nodes, model.num_labels
        return UAIModel(mrf=model, cardinalities=torch.full((N,), L, dtype=torch.long))
    raise CRFTypeError(f"expected a UAIModel or a GraphMRF, got {type(model).__name__}")


def format_uai(model) -> str:
    """The text of a UAI ``MARKOV`` file for a :class:`UAIModel` or an unbatched ``GraphMRF``.

    One unary factor per variable (in variable order), then one pairwise factor per edge (in
    edge order, scope ``edges[e]``); a constant becomes a factor on no variable.
    """
    m = _as_uai_model(model)
    mrf = m.mrf
    N, L = mrf.num_nodes, mrf.num_labels
    cards = m.cardinalities.long().tolist()
    if len(cards) != N or min(cards) < 1 or max(cards) > L:
        raise CRFValueError(f"expected {N} cardinalities in [1, {L}], got {cards}")
    unary = mrf.unary.detach().double().cpu().numpy()
    edges = mrf.edges.cpu().numpy()
    tables = mrf.edge_tables().detach().double().cpu().numpy()
    hard = m.hard_score
    lines = ["MARKOV", str(N), " ".join(str(c) for c in cards)]
    F = N + len(edges) + (1 if m.constant != 0.0 else 0)
    lines.append(str(F))
    lines += [f"1 {i}" for i in range(N)]
    lines += [f"2 {int(i)} {int(j)}" for i, j in edges]
    if m.constant != 0.0:
        lines.append("0")
    lines.append("")
    for i in range(N):
        lines.append(str(cards[i]))
        lines.append(" " + " ".join(_fmt_exp(float(s), hard) for s in unary[i, : cards[i]]))
        lines.append("")
    for e, (i, j) in enumerate(edges):
        ci, cj = cards[int(i)], cards[int(j)]
        lines.append(str(ci * cj))
        for a in range(ci):
            lines.append(" " + " ".join(_fmt_exp(float(s), hard) for s in tables[e, a, :cj]))
        lines.append("")
    if m.constant != 0.0:
        lines += ["1", " " + _fmt_exp(m.constant, None), ""]
    return "\n".join(lines)


def write_uai(path, model) -> None:
    """Write a :class:`UAIModel` or an unbatched ``GraphMRF`` as a UAI file (atomically)."""
    atomic_write_text(path, format_uai(model))


# --------------------------------------------------------------------------- evidence
def parse_evidence(text: str, name: str = "<string>", *, cardinalities=None) -> dict[int, int]:
    """Parse an evidence file: ``n  var val  var val ...`` (or ``1  n  var val ...``).

    Returns ``{variable: value}``; checks indices against ``cardinalities [N]`` when given.
    """
    tk = _Tokens(text, name)
    if tk.at_end():
        return {}
    nums = []
    for t, ln in zip(tk.toks, tk.lines):
        try:
            nums.append(int(t))
        except ValueError:
            raise tk.error(f"expected an integer in the evidence, got {t!r}", ln) from None
    if len(nums) == 1 + 2 * nums[0]:
        start = 1
    elif nums[0] == 1 and len(nums) >= 2 and len(nums) == 2 + 2 * nums[1]:
        start = 2  # the older form: number of samples (1), then one sample
    else:
        raise tk.error(
            f"expected 'n' followed by n (variable, value) pairs, "
            f"got {len(nums)} numbers starting with {nums[0]}",
            tk.lines[0],
        )
    out: dict[int, int] = {}
    cards = None if cardinalities is None else [int(c) for c in cardinalities]
    for k in range(start, len(nums), 2):
        var, val, ln = nums[k], nums[k + 1], tk.lines[k]
        if cards is not None:
            if not 0 <= var < len(cards):
                raise tk.error(f"expected a variable index in [0, {len(cards) - 1}], got {var}", ln)
            if not 0 <= val < cards[var]:
                raise tk.error(
                    f"expected a value of variable {var} in [0, {cards[var] - 1}], got {val}", ln
                )
        elif var < 0 or val < 0:
            raise tk.error(f"expected non-negative variable and value, got {var} {val}", ln)
        if var in out and out[var] != val:
            raise tk.error(f"variable {var} is observed twice with different values", ln)
        out[var] = val
    return out


def read_evidence(path, *, cardinalities=None) -> dict[int, int]:
    """Read a ``.evid`` file (see :func:`parse_evidence`)."""
    path = os.fspath(path)
    return parse_evidence(_read_text(path, "UAI evidence file"), name=path, cardinalities=cardinalities)


def apply_evidence(model: UAIModel, evidence: Mapping[int, int]) -> UAIModel:
    """Fix observed variables: every other label of an observed variable gets the hard score.

    Returns a new :class:`UAIModel` (same graph and indices; the input is not modified).
    """
    if not evidence:
        return model
    mrf = model.mrf
    N = mrf.num_nodes
    cards = model.cardinalities.tolist()
    hard = model.hard_score
    unary = mrf.unary.detach().double().cpu().numpy()
    tables = mrf.edge_tables().detach().double().cpu().numpy()
    if hard is None:
        mask_u = np.arange(mrf.num_labels)[None, :] < np.asarray(cards)[:, None]
        e = mrf.edges.numpy()
        mask_t = mask_u[e[:, 0]][:, :, None] & mask_u[e[:, 1]][:, None, :]
        hard = hard_score_for(unary, tables, mask_u, mask_t)
    unary = unary.copy()
    for var, val in evidence.items():
        var, val = int(var), int(val)
        if not 0 <= var < N or not 0 <= val < cards[var]:
            raise CRFValueError(
                f"expected evidence variable in [0, {N - 1}] with a value below its "
                f"cardinality, got {var} = {val}"
            )
        if unary[var, val] <= hard:
            raise CRFValueError(
                f"evidence {var} = {val} has factor value 0 in the model (probability 0)"
            )
        keep = unary[var, val]
        unary[var, :] = hard
        unary[var, val] = keep
    dtype = mrf.unary.dtype
    new = GraphMRF(torch.from_numpy(unary).to(dtype), mrf.edges, mrf.pairwise)
    return UAIModel(
        mrf=new, cardinalities=model.cardinalities, hard_score=hard, constant=model.constant
    )


# --------------------------------------------------------------------------- results
def write_map_result(path, labels) -> None:
    """Write a ``MAP`` result file: ``MAP`` then ``N x_0 ... x_{N-1}``. ``labels [N]``."""
    lab = torch.as_tensor(labels).reshape(-1).tolist()
    atomic_write_text(path, "MAP\n" + " ".join(str(int(x)) for x in [len(lab), *lab]) + "\n")


def write_mar_result(path, marginals, cardinalities) -> None:
    """Write a ``MAR`` result file from ``marginals [N, L]`` and ``cardinalities [N]``.

    Each variable's first ``card_i`` probabilities are written, renormalised to sum to 1.
    """
    p = torch.as_tensor(marginals).detach().double().cpu()
    cards = [int(c) for c in torch.as_tensor(cardinalities).tolist()]
    if p.dim() != 2 or p.shape[0] != len(cards):
        raise CRFShapeError(
            f"expected marginals of shape [N, L] with N = {len(cards)}, got {fmt_shape(p.shape)}"
        )
    parts = [str(len(cards))]
    for i, c in enumerate(cards):
        row = p[i, :c].clamp(min=0)
        row = row / row.sum().clamp(min=1e-300)
        parts.append(str(c))
        parts += [repr(float(x)) for x in row]
    atomic_write_text(path, "MAR\n" + " ".join(parts) + "\n")


def _result_tokens(path, header: str) -> _Tokens:
    path = os.fspath(path)
    tk = _Tokens(_read_text(path, f"{header} result file"), path)
    t, ln = tk.next(f"the header {header}")
    if t != header:
        raise tk.error(f"expected the header {header}, got {t!r}", ln)
    return tk


def read_map_result(path) -> torch.Tensor:
    """Read a ``MAP`` result file -> ``labels [N]`` (long)."""
    tk = _result_tokens(path, "MAP")
    n = tk.int("the number of variables", lo=0)
    out = torch.tensor(
        [tk.int(f"the label of variable {i}", lo=0) for i in range(n)], dtype=torch.long
    )
    if not tk.at_end():
        raise tk.error(f"expected the end of the file after {n} labels, got {tk.toks[tk.pos]!r}")
    return out


def read_mar_result(path) -> list[torch.Tensor]:
    """Read a ``MAR`` result file -> one probability vector ``[card_i]`` per variable."""
    tk = _result_tokens(path, "MAR")
    n = tk.int("the number of variables", lo=0)
    out = []
    for i in range(n):
        c = tk.int(f"the cardinality of variable {i}", lo=1)
        vals = []
        for k in range(c):
            t, ln = tk.next(f"probability {k} of variable {i}")
            try:
                vals.append(float(t))
            except ValueError:
                raise tk.error(f"expected a probability, got {t!r}", ln) from None
        out.append(torch.tensor(vals, dtype=torch.float64))
    if not tk.at_end():
        raise tk.error(f"expected the end of the file after {n} variables, got {tk.toks[tk.pos]!r}")
    return out
