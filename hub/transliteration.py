"""Greek to Latin per ELOT 743 (ISO 843 type 2, the transcription on Greek passports).

Some agencies run off-the-shelf systems that accept Latin characters only, so mappings
transliterate names and addresses with ``elot743`` before they leave the hub. Passports,
tax and social-security registries use the same rules, so a beneficiary keeps one
recognisable Latin spelling across agencies.

Why not a library: the house style prefers one, and ``greek-to-greeklish==0.0.8`` (the only
Python package on offer that claims ELOT 743) was evaluated first against real names:

* it does not import on Python 3.11: it is JavaScript machine-translated by Js2Py 0.71,
  whose bytecode injector raises ``RuntimeError: Your python version made changes to the
  bytecode`` (Js2Py is also unmaintained and carries CVE-2024-28397, a sandbox escape);
* reading its rules (they are data in the translated source), even where it runs it
  decides av/af before a *bare* vowel only, so ``Ευάγγελος`` gives ``Efangelos`` (not
  ``Evangelos``) and ``Ναυάγιο`` ``Nafagio``; it has no ``γξ``/``γχ`` rule, so
  ``Αγχίαλος`` gives ``Agchialos`` (not ``Anchialos``) and ``Σφίγξ`` ``Sfigx``.

So this is a small table-driven implementation. Rules, per ELOT 743:2001:

* one letter each: α a, β v, γ g, δ d, ε e, ζ z, η i, θ th, ι i, κ k, λ l, μ m, ν n,
  ξ x, ο o, π p, ρ r, σ/ς s, τ t, υ y, φ f, χ ch, ψ ps, ω o;
* γ before γ, ξ, χ is n (γγ ng, γξ nx, γχ nch); γκ stays gk;
* ου is ou; αυ, ευ, ηυ are av, ev, iv before a vowel or β γ δ ζ λ μ ν ρ, and af, ef, if
  before θ κ ξ π σ τ φ χ ψ or at the end of a word;
* μπ is b at the start or the end of a word, mp inside it (``Μπάμπης`` is ``Bampis``);
* tonos and diaeresis are dropped, but a diaeresis (or a tonos on the first vowel) breaks
  a pair: ``Λαϊκή`` Laiki, ``Ταΰγετος`` Taygetos, ``άυλος`` aylos;
* case follows the source: ``Χρήστος`` Christos, ``ΧΡΗΣΤΟΣ`` CHRISTOS;
* everything that is not a Greek letter passes through unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["contains_greek", "elot743"]

_LETTERS = {
    "α": "a",
    "β": "v",
    "γ": "g",
    "δ": "d",
    "ε": "e",
    "ζ": "z",
    "η": "i",
    "θ": "th",
    "ι": "i",
    "κ": "k",
    "λ": "l",
    "μ": "m",
    "ν": "n",
    "ξ": "x",
    "ο": "o",
    "π": "p",
    "ρ": "r",
    "σ": "s",
    "ς": "s",
    "τ": "t",
    "υ": "y",
    "φ": "f",
    "χ": "ch",
    "ψ": "ps",
    "ω": "o",
}
# Symbol variants of letters (from typesetting or copy-paste) read as the plain letter.
_VARIANTS = {"ϐ": "β", "ϑ": "θ", "ϕ": "φ", "ϖ": "π", "ϲ": "σ", "ϵ": "ε", "ϰ": "κ", "ϱ": "ρ"}
_VOWELS = frozenset("αεηιουω")
_VOICED = frozenset("βγδζλμνρ")
_N_BEFORE = frozenset("γξχ")
_DIAERESIS = "\u0308"
_GREEK_RE = re.compile("[\u0370-\u03ff\u1f00-\u1fff]")


@dataclass(frozen=True, slots=True)
class _Unit:
    """One source character: a Greek letter (lower-case base, marks noted) or anything else."""

    text: str
    letter: str | None = None
    upper: bool = False
    diaeresis: bool = False
    accent: bool = False


def _units(text: str) -> list[_Unit]:
    """Split into base characters with their combining marks (precomposed or not)."""
    clusters: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if clusters and unicodedata.combining(ch):
            clusters[-1] += ch
        else:
            clusters.append(ch)
    units = []
    for cluster in clusters:
        base = cluster[0]
        lower = _VARIANTS.get(base.lower(), base.lower())
        if lower in _LETTERS:
            marks = cluster[1:]
            units.append(
                _Unit(
                    cluster,
                    lower,
                    upper=base != base.lower(),
                    diaeresis=_DIAERESIS in marks,
                    accent=any(m != _DIAERESIS for m in marks),
                )
            )
        else:
            units.append(_Unit(unicodedata.normalize("NFC", cluster)))
    return units


def _letter(units: list[_Unit], i: int) -> str | None:
    return units[i].letter if 0 <= i < len(units) else None


def _cased(latin: str, units: list[_Unit], start: int, size: int) -> str:
    """Case ``latin`` like its source: all caps inside an upper-case word, else title."""
    if not units[start].upper:
        return latin
    if size > 1:
        all_caps = units[start + 1].upper
    else:
        neighbour = start + 1 if _letter(units, start + 1) else start - 1
        all_caps = _letter(units, neighbour) is not None and units[neighbour].upper
    return latin.upper() if all_caps else latin[0].upper() + latin[1:]


def _pair(units: list[_Unit], i: int) -> tuple[str, int] | None:
    """The two-letter rules at ``i``: (latin, letters consumed) or None."""
    first, second = _letter(units, i), _letter(units, i + 1)
    if first is None or second is None:
        return None
    if first == "μ" and second == "π":
        inside = _letter(units, i - 1) is not None and _letter(units, i + 2) is not None
        return ("mp" if inside else "b"), 2
    if units[i].accent or units[i + 1].diaeresis or second != "υ":
        return None  # a tonos on the first vowel or a diaeresis makes two syllables
    if first == "ο":
        return "ou", 2
    if first in "αεη":
        after = _letter(units, i + 2)
        voiced = after is not None and (after in _VOWELS or after in _VOICED)
        return _LETTERS[first] + ("v" if voiced else "f"), 2
    return None


def elot743(text: str) -> str:
    """``text`` with every Greek letter transliterated per ELOT 743; the rest unchanged."""
    if not _GREEK_RE.search(text):
        return text
    units = _units(text)
    out: list[str] = []
    i = 0
    while i < len(units):
        letter = units[i].letter
        if letter is None:
            out.append(units[i].text)
            i += 1
            continue
        pair = _pair(units, i)
        if pair is not None:
            latin, size = pair
        elif letter == "γ" and _letter(units, i + 1) in _N_BEFORE:
            latin, size = "n", 1
        else:
            latin, size = _LETTERS[letter], 1
        out.append(_cased(latin, units, i, size))
        i += size
    return "".join(out)


def contains_greek(text: str) -> bool:
    """True if any character is from the Greek or Greek Extended Unicode blocks."""
    return _GREEK_RE.search(text) is not None
