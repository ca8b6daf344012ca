"""MkDocs hook (mkdocs.yml `hooks:`): the home page from README.md, and the Performance page's
tables, generated at build time from the benchmark result files listed in `benchmarks/tables.yml`.

Each entry of `benchmarks/tables.yml` names one JSON file of `benchmarks/results/` and how to
show it: `table: FIELD` (the markdown table the benchmark wrote into the file), `text: FIELD`
(a plain-text table, shown as a code block), or `rows:` / `rows_from:` with `columns:` (a table
built from a list of records, or from a mapping of records whose key becomes the `_key` field).
Every entry also gives a `title`, a `command` that reproduces the file, the `machine` it ran on,
and optionally `about` (markdown shown above the table). Result files that no entry lists are
named at the end of the page, so that a new file is visible before it has an entry.
"""

import json
import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
TABLES = ROOT / "benchmarks" / "tables.yml"
RESULTS = ROOT / "benchmarks" / "results"
MARKER = "<!-- benchmark tables -->"
README_MARKER = "<!-- README -->"


def _lookup(record, path):
    """record["a"]["b"] for path "a.b"."""
    for part in path.split("."):
        if not isinstance(record, dict) or part not in record:
            raise KeyError(path)
        record = record[part]
    return record


def _cell(record, column):
    """The column's value in record; None (shown as "-") where the column says `optional: true`
    and the record lacks the key."""
    try:
        return _lookup(record, column["key"])
    except KeyError:
        if column.get("optional"):
            return None
        raise


def _format(value, spec):
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def _records(data, entry):
    if "rows" in entry:
        return list(_lookup(data, entry["rows"]))
    mapping = data if entry["rows_from"] == "." else _lookup(data, entry["rows_from"])
    keys = entry.get("keys", list(mapping))
    return [{"_key": key, **mapping[key]} for key in keys]


def _table(data, entry):
    if "table" in entry:
        return _lookup(data, entry["table"]).strip()
    if "text" in entry:
        return "```\n" + _lookup(data, entry["text"]).strip() + "\n```"
    columns = entry["columns"]
    lines = [
        "| " + " | ".join(column["header"] for column in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for record in _records(data, entry):
        cells = [_format(_cell(record, column), column.get("format", "")) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions(data):
    """The software versions a result file records, as one line (empty if it records none)."""
    versions = data.get("versions") if isinstance(data, dict) else None
    if not isinstance(versions, dict):
        return ""
    named = [f"{name} {value}" for name, value in versions.items() if name not in ("cpus", "machine")]
    return ", ".join(named)


def render(tables_file=TABLES, results=RESULTS):
    """The markdown of every listed result file's table, then the unlisted files' names."""
    entries = yaml.safe_load(tables_file.read_text())["tables"]
    parts = []
    for entry in entries:
        path = results / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{tables_file}: {entry['file']} is not in {results}")
        data = json.loads(path.read_text())
        try:
            table = _table(data, entry)
        except KeyError as error:
            raise KeyError(f"{tables_file}: {entry['file']} has no field {error}") from None
        lines = [f"### {entry['title']}", ""]
        if entry.get("about"):
            lines += [entry["about"].strip(), ""]
        lines += [table, ""]
        source = f"Machine: {entry['machine'].strip()}"
        versions = _versions(data)
        if versions:
            source += f" ({versions})"
        lines += [
            f"{source}. Reproduce: `{entry['command'].strip()}` (writes `benchmarks/results/{entry['file']}`).",
            "",
        ]
        parts.append("\n".join(lines))
    listed = {entry["file"] for entry in entries}
    unlisted = sorted(path.name for path in results.glob("*.json") if path.name not in listed)
    if unlisted:
        parts.append(
            "### Other result files\n\nNot shown above (no entry in `benchmarks/tables.yml` yet): "
            + ", ".join(f"`{name}`" for name in unlisted)
            + ".\n"
        )
    return "\n".join(parts)


def readme():
    """README.md for the site's home page: its links into docs/ made relative to docs/."""
    return (ROOT / "README.md").read_text().replace("](docs/", "](")


def on_page_markdown(markdown, page, config, files):
    if README_MARKER in markdown:
        markdown = markdown.replace(README_MARKER, readme())
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render())
    return markdown
