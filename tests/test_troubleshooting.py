"""docs/troubleshooting.md has one row per error code and matches the catalog."""

from backpropagate_core import troubleshooting
from backpropagate_core.errors import CATALOG

REGENERATE = "regenerate with: python -m backpropagate_core.troubleshooting"


def test_every_error_code_has_a_symptom_and_a_cause():
    missing = troubleshooting.missing_entries()
    assert not missing, (f"add these codes to ENTRIES in backpropagate_core/troubleshooting.py, "
                         f"then {REGENERATE}: {missing}")
    stale = sorted(set(troubleshooting.ENTRIES) - set(CATALOG))
    assert not stale, f"ENTRIES describes codes that are no longer in errors.CATALOG: {stale}"


def test_the_document_is_up_to_date():
    text = troubleshooting.DOC.read_text(encoding="utf-8")
    assert text == troubleshooting.render(), f"docs/troubleshooting.md is stale; {REGENERATE}"


def test_one_row_per_code_with_its_fix():
    text = troubleshooting.render()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    for code, spec in CATALOG.items():
        matching = [row for row in rows if f"| `{code}` |" in row]
        assert len(matching) == 1, code
        assert len(matching[0].split(" | ")) == 4  # symptom, code, cause, fix
        assert spec.hint.split("|")[0][:30] in matching[0]


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    target = tmp_path / "troubleshooting.md"
    target.write_text("old")
    assert troubleshooting.main(["--check", str(target)]) == 1
    assert troubleshooting.main([str(target)]) == 0
    assert troubleshooting.main(["--check", str(target)]) == 0
