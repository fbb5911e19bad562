//! Printing results as Docker-like aligned columns or as JSON.

use comfy_table::{CellAlignment, Table, presets};

/// A table with Docker's look: upper-case headers, no borders, columns padded apart.
pub fn table<I, R, C>(headers: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = C>,
    C: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(headers.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
        column.set_cell_alignment(CellAlignment::Left);
    }
    table
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pretty JSON of any serializable value.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)?)
}

/// Renders a Go-template-like `--format` for one row: `{{.Field}}` (also `{{ .Field }}`) from
/// the row's fields, `{{json .}}` for the whole row, `\t` and `\n`. A field the row does not
/// have is an error naming the ones it has.
pub fn render(
    template: &str,
    row: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .with_context(|| format!("invalid format {template:?}: unclosed {{{{"))?;
        let inner = rest[start + 2..start + end].trim();
        if inner == "json ." {
            out.push_str(&serde_json::to_string(row)?);
        } else {
            let name = inner
                .strip_prefix('.')
                .with_context(|| format!("invalid format field {inner:?}: expected .Name"))?;
            let value = row.get(name).with_context(|| {
                let known: Vec<&str> = row.keys().map(String::as_str).collect();
                format!("unknown format field {name:?}: try {}", known.join(", "))
            })?;
            match value {
                serde_json::Value::String(s) => out.push_str(s),
                serde_json::Value::Null => {}
                other => out.push_str(&other.to_string()),
            }
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out.replace("\\t", "\t").replace("\\n", "\n"))
}

/// A `table TEMPLATE` format's header line (the field names upper-cased) and template; None
/// for a template without the `table ` prefix.
pub fn table_template(template: &str) -> Option<(String, &str)> {
    let template = template.strip_prefix("table ")?;
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(s) = rest.find("{{") {
        let Some(e) = rest[s..].find("}}") else { break };
        names.push(
            rest[s + 2..s + e]
                .trim()
                .trim_start_matches('.')
                .to_uppercase(),
        );
        rest = &rest[s + e + 2..];
    }
    Some((names.join("\t"), template))
}
