"""ELOT 743 transliteration: the grocery's system takes Latin only, so a wrong rule here
means a beneficiary whose name no longer matches their passport or tax record."""

from __future__ import annotations

import pytest

from hub.transliteration import contains_greek, elot743

# Real names and Kozani addresses, with the spelling on the holder's Greek passport.
NAMES = [
    ("Παπαδοπούλου", "Papadopoulou"),
    ("Γεώργιος", "Georgios"),
    ("Ευάγγελος", "Evangelos"),
    ("Ευθυμίου", "Efthymiou"),
    ("Αυγερινός", "Avgerinos"),
    ("Μπουρνάζος", "Bournazos"),
    ("Τσακίρης", "Tsakiris"),
    ("Ζαφειρίου", "Zafeiriou"),
    ("Αγγελική", "Angeliki"),
    ("Ψαρράς", "Psarras"),
    ("Χρήστος", "Christos"),
    ("Κοζάνη", "Kozani"),
    ("Δημοκρατίας", "Dimokratias"),
    ("Θεσσαλονίκη", "Thessaloniki"),
    ("Αθανάσιος", "Athanasios"),
    ("Ευαγγελία", "Evangelia"),
    ("Λαϊκή", "Laiki"),
    ("Ξανθή", "Xanthi"),
    ("Αργυρώ", "Argyro"),
    ("Μαυρίδης", "Mavridis"),
]

# One case per rule that the names above do not already pin down.
RULES = [
    ("Αγχίαλος", "Anchialos"),  # γχ -> nch
    ("Σφίγξ", "Sfinx"),  # γξ -> nx
    ("Γκούμας", "Gkoumas"),  # γκ stays gk, also word-initially
    ("Ντίνος", "Ntinos"),  # ντ stays nt
    ("Τζαβέλλα", "Tzavella"),
    ("Μπάμπης", "Bampis"),  # μπ: b initially, mp inside
    ("κεμπάμπ", "kempab"),  # ... and b at the end of a word
    ("Ναυάγιο", "Navagio"),  # αυ before an accented vowel voices
    ("Ευβοίας", "Evvoias"),
    ("Ησαύ", "Isaf"),  # αυ at the end of a word
    ("άνευ", "anef"),
    ("ευφυής", "effyis"),
    ("απηύδησε", "apivdise"),  # ηυ
    ("Ταΰγετος", "Taygetos"),  # diaeresis breaks the pair
    ("Προϋπολογισμός", "Proypologismos"),
    ("άυλος", "aylos"),  # so does a tonos on the first vowel
    ("Πρωτεΐνη", "Proteini"),
    ("Ἀθῆναι", "Athinai"),  # polytonic marks are dropped too
    ("Ζωή", "Zoi"),
]


@pytest.mark.parametrize(("greek", "latin"), NAMES + RULES)
def test_names_follow_elot_743(greek: str, latin: str) -> None:
    assert elot743(greek) == latin


@pytest.mark.parametrize(
    ("greek", "latin"),
    [
        ("ΘΕΣΣΑΛΟΝΙΚΗ", "THESSALONIKI"),
        ("ΧΡΗΣΤΟΣ", "CHRISTOS"),
        ("ΨΑΡΡΑΣ", "PSARRAS"),
        ("ΜΠΟΥΡΝΑΖΟΣ", "BOURNAZOS"),
        ("ΕΥΑΓΓΕΛΟΣ", "EVANGELOS"),
        ("ΑΥΓΕΡΙΝΟΣ", "AVGERINOS"),
        ("ΕΥΘΥΜΙΟΥ", "EFTHYMIOU"),
        ("ΛΑΪΚΗ", "LAIKI"),
        ("ΠΑΠΑΔΟΠΟΥΛΟΥ Θ.", "PAPADOPOULOU Th."),
        ("ΓΙΑΝΝΗΣ ΧΑΤΖΗΣ", "GIANNIS CHATZIS"),
    ],
)
def test_capitals_are_kept(greek: str, latin: str) -> None:
    assert elot743(greek) == latin


def test_mixed_text_keeps_digits_latin_and_punctuation() -> None:
    assert elot743("Δημοκρατίας 1, 50100 Κοζάνη") == "Dimokratias 1, 50100 Kozani"
    assert elot743("Αγίου Δημητρίου 12Α, διαμ. 3") == "Agiou Dimitriou 12A, diam. 3"
    assert elot743("Μαρία-Ελένη O'Brien (café)") == "Maria-Eleni O'Brien (café)"
    assert elot743("Τι κάνεις;") == "Ti kaneis;"  # the Greek question mark is a semicolon
    assert elot743("Maria Papadopoulou, 50100") == "Maria Papadopoulou, 50100"
    assert elot743("") == ""


def test_decomposed_accents_are_read_like_precomposed_ones() -> None:
    assert elot743("Ευα\u0301γγελος") == "Evangelos"
    assert elot743("Λαι\u0308κη\u0301") == "Laiki"


@pytest.mark.parametrize(
    "text", [elot743(greek) for greek, _ in NAMES] + ["O'Brien 12", "Zoë", "µ 5"]
)
def test_output_holds_no_greek(text: str) -> None:
    assert not contains_greek(text)


def test_contains_greek_sees_any_greek_letter() -> None:
    assert contains_greek("Maria Παπαδοπούλου")
    assert contains_greek("ἀ")
    assert not contains_greek("Papadopoulou 50100")
