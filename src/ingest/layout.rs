//! A partner's CSV layout, resolved against one file's header, and one row
//! turned into a canonical event: columns found, partner codes mapped
//! (`inbox[].mapping`), cells read by type, then the shared validation
//! ([`crate::input::validate_event`], the same checks as `POST /v1/events`).
//!
//! Pure: no I/O, no engine. Whether the location is configured and whether the
//! position allows the change are the engine's to answer.

use std::str::FromStr;

use serde_json::{json, Map, Value};

use crate::codes::Code;
use crate::config::{Config, InboxColumn, InboxConfig, EVENT_TYPES, INBOX_EVENT_TYPES};
use crate::domain::{AdjustReason, QuarantineAction};
use crate::engine::WarehouseEvent;
use crate::input::{validate_event, EventFields, InputError};

/// The fields a row may carry, in the order of `InboxColumns::fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Sku = 0,
    Location,
    Kind,
    Qty,
    Reason,
    Restockable,
    Action,
    OccurredAt,
    ExpectedVersion,
}

const FIELDS: [Field; 9] = [
    Field::Sku,
    Field::Location,
    Field::Kind,
    Field::Qty,
    Field::Reason,
    Field::Restockable,
    Field::Action,
    Field::OccurredAt,
    Field::ExpectedVersion,
];

/// Default positions (0-based) of a headerless file when `columns` names none:
/// `sku,location,type,qty,reason` (SPEC §7).
const DEFAULT_POSITIONS: [Option<usize>; 9] = [
    Some(0),
    Some(1),
    Some(2),
    Some(3),
    Some(4),
    None,
    None,
    None,
    None,
];

/// Where each field is in this file's rows.
#[derive(Debug, Clone)]
pub struct Layout {
    columns: [Option<usize>; 9],
    /// Fields a row must have: one past the last required column.
    width: usize,
    /// The header's names, for the payload kept with a rejected row.
    header: Option<Vec<String>>,
}

fn required(field: Field, inbox: &InboxConfig) -> bool {
    match field {
        Field::Sku | Field::Location | Field::Qty => true,
        Field::Kind => inbox.default_type.is_none(),
        _ => false,
    }
}

/// A header cell as compared with configured names: trimmed, a leading byte
/// order mark dropped, case-insensitive.
fn header_key(cell: &str) -> String {
    cell.trim_start_matches('\u{feff}').trim().to_lowercase()
}

impl Layout {
    /// Resolves the configured columns against `header` (the file's first
    /// record, when the inbox has one). An error is why the whole file cannot
    /// be read.
    pub fn resolve(inbox: &InboxConfig, header: Option<&[String]>) -> Result<Layout, String> {
        let configured = inbox.columns.fields();
        let named_any = configured.iter().any(|(_, column)| column.is_some());
        let mut columns = [None; 9];
        for (field, (name, column)) in FIELDS.iter().zip(configured.iter()) {
            let index = *field as usize;
            columns[index] = match (header, column) {
                (Some(header), Some(InboxColumn::Name(wanted))) => {
                    let key = header_key(wanted);
                    let found = header.iter().position(|cell| header_key(cell) == key);
                    match found {
                        Some(found) => Some(found),
                        None => {
                            return Err(format!(
                                "the header has no column {wanted:?} (columns.{name})"
                            ))
                        }
                    }
                }
                (Some(header), Some(InboxColumn::Position(position))) => {
                    let found = *position as usize - 1;
                    if found >= header.len() {
                        return Err(format!(
                            "the header has {} columns, columns.{name} is column {position}",
                            header.len()
                        ));
                    }
                    Some(found)
                }
                (Some(header), None) => {
                    let found = header.iter().position(|cell| header_key(cell) == *name);
                    if found.is_none() && required(*field, inbox) {
                        return Err(format!(
                            "the header has no `{name}` column (name the partner's column in columns.{name})"
                        ));
                    }
                    found
                }
                (None, Some(InboxColumn::Position(position))) => Some(*position as usize - 1),
                // Validated: without a header, columns are positions.
                (None, Some(InboxColumn::Name(_))) => None,
                (None, None) if named_any => None,
                (None, None) => DEFAULT_POSITIONS[index],
            };
        }
        let width = FIELDS
            .iter()
            .filter(|field| required(**field, inbox))
            .filter_map(|field| columns[*field as usize])
            .max()
            .map_or(0, |last| last + 1);
        Ok(Layout {
            columns,
            width,
            header: header.map(<[String]>::to_vec),
        })
    }

    /// Fields a row needs.
    pub fn width(&self) -> usize {
        self.width
    }

    fn cell<'a>(&self, cells: &[&'a str], field: Field) -> &'a str {
        self.columns[field as usize]
            .and_then(|index| cells.get(index))
            .map_or("", |cell| cell.trim())
    }

    fn has(&self, field: Field) -> bool {
        self.columns[field as usize].is_some()
    }

    /// The row as kept with a rejection: `{"file", "line", "row"}`, the row as an
    /// object by header name (an array without a header).
    pub fn payload(&self, file: &str, line: u64, cells: &[&str]) -> String {
        let row = match &self.header {
            Some(header) => {
                let mut object = Map::new();
                for (index, cell) in cells.iter().enumerate() {
                    let key = header
                        .get(index)
                        .map_or_else(|| format!("column_{}", index + 1), |h| h.trim().to_string());
                    object.entry(key).or_insert_with(|| json!(cell));
                }
                Value::Object(object)
            }
            None => json!(cells),
        };
        json!({"file": file, "line": line, "row": row}).to_string()
    }
}

/// Why a row was not turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub code: &'static str,
    pub detail: String,
    /// A known event type, or `unknown` (metric label).
    pub type_label: &'static str,
    pub sku: Option<String>,
    pub location: Option<String>,
}

/// What one row needs besides its cells.
pub struct RowContext<'a> {
    pub config: &'a Config,
    pub inbox: &'a InboxConfig,
    pub layout: &'a Layout,
    /// File name, for the payload.
    pub file: &'a str,
}

/// A quantity cell as a JSON number (a leading `+` allowed), so the shared
/// validation refuses fractions and huge values as it does in JSON.
fn number(what: &str, cell: &str) -> Result<Option<serde_json::Number>, InputError> {
    if cell.is_empty() {
        return Ok(None);
    }
    let digits = cell.strip_prefix('+').unwrap_or(cell);
    serde_json::Number::from_str(digits)
        .map(Some)
        .map_err(|_| InputError::bad_request(format!("{what} {cell:?} is not a number")))
}

/// `reason` (and friends) as a snake_case enum of the domain.
fn keyword<T: serde::de::DeserializeOwned>(
    what: &str,
    cell: &str,
    expected: &str,
) -> Result<Option<T>, InputError> {
    if cell.is_empty() {
        return Ok(None);
    }
    serde_json::from_value(json!(cell.to_ascii_lowercase()))
        .map(Some)
        .map_err(|_| {
            InputError::bad_request(format!("{what} {cell:?}: expected one of {expected}"))
        })
}

/// Whether a returned unit is restockable: `true/yes/y/1/restockable` or
/// `false/no/n/0/not_restockable`; empty is not restockable (it is quarantined
/// until someone releases it, so a return never makes stock sellable unasked).
fn restockable(cell: &str) -> Result<bool, InputError> {
    match cell.to_ascii_lowercase().as_str() {
        "" | "false" | "no" | "n" | "0" | "not_restockable" => Ok(false),
        "true" | "yes" | "y" | "1" | "restockable" => Ok(true),
        _ => Err(InputError::bad_request(format!(
            "restockable {cell:?}: expected true or false (yes/no, restockable/not_restockable)"
        ))),
    }
}

/// Milliseconds since the epoch of a time cell, in `date_format` or RFC 3339.
/// Without an offset a time is UTC; a date alone is midnight UTC.
pub fn parse_time(cell: &str, format: Option<&str>) -> Result<i64, String> {
    let Some(format) = format else {
        return chrono::DateTime::parse_from_rfc3339(cell)
            .map(|t| t.timestamp_millis())
            .map_err(|_| format!("occurred_at {cell:?} is not an RFC 3339 timestamp"));
    };
    if let Ok(time) = chrono::DateTime::parse_from_str(cell, format) {
        return Ok(time.timestamp_millis());
    }
    if let Ok(time) = chrono::NaiveDateTime::parse_from_str(cell, format) {
        return Ok(time.and_utc().timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(cell, format) {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc().timestamp_millis());
        }
    }
    Err(format!(
        "occurred_at {cell:?} does not match date_format {format:?}"
    ))
}

/// The event type of a row: mapped partner code, else our own name
/// (case-insensitive), else `default_type` for an empty cell.
fn row_type(context: &RowContext<'_>, cell: &str) -> Result<&'static str, (String, &'static str)> {
    let inbox = context.inbox;
    let name = if cell.is_empty() {
        match &inbox.default_type {
            Some(kind) => kind.clone(),
            None => {
                return Err((
                    "the type cell is empty (set default_type for rows without one)".to_string(),
                    "unknown",
                ))
            }
        }
    } else {
        inbox
            .mapping
            .types
            .get(cell)
            .cloned()
            .unwrap_or_else(|| cell.to_ascii_lowercase())
    };
    if let Some(kind) = INBOX_EVENT_TYPES.iter().find(|t| **t == name) {
        return Ok(kind);
    }
    let label = EVENT_TYPES
        .iter()
        .find(|t| **t == name)
        .copied()
        .unwrap_or("unknown");
    let detail = if label == "unknown" {
        format!(
            "unknown event type {cell:?}: an inbox row is one of {} (or a code in mapping.types)",
            INBOX_EVENT_TYPES.join(", ")
        )
    } else {
        format!("{name} rows cannot come from an inbox file: transfers go through the transfer workflow")
    };
    Err((detail, label))
}

/// Turns one row into a validated event with id `event_id`.
pub fn row_event(
    context: &RowContext<'_>,
    event_id: String,
    line: u64,
    cells: &[&str],
) -> Result<WarehouseEvent, RowError> {
    let (inbox, layout) = (context.inbox, context.layout);
    let raw_sku = layout.cell(cells, Field::Sku);
    let raw_location = layout.cell(cells, Field::Location);
    let sku = inbox
        .mapping
        .skus
        .get(raw_sku)
        .map_or(raw_sku, String::as_str)
        .to_string();
    let location = inbox
        .mapping
        .locations
        .get(raw_location)
        .map_or(raw_location, String::as_str)
        .to_string();
    let fail = |code: &'static str, detail: String, type_label: &'static str| RowError {
        code,
        detail,
        type_label,
        sku: (!sku.is_empty()).then(|| sku.clone()),
        location: (!location.is_empty()).then(|| location.clone()),
    };
    if cells.len() < layout.width {
        return Err(fail(
            Code::BadRequest.as_str(),
            format!(
                "the row has {} fields, the layout needs at least {}",
                cells.len(),
                layout.width
            ),
            "unknown",
        ));
    }
    let kind = row_type(context, layout.cell(cells, Field::Kind))
        .map_err(|(detail, label)| fail(Code::UnsupportedType.as_str(), detail, label))?;
    let api = |error: InputError| fail(error.code.as_str(), error.detail, kind);
    let mut fields = EventFields::new(
        event_id,
        kind.to_string(),
        inbox.source.clone(),
        layout.payload(context.file, line, cells),
    );
    fields.sku = sku.clone();
    fields.location = location.clone();
    let occurred_at = layout.cell(cells, Field::OccurredAt);
    fields.occurred_at_ms = if occurred_at.is_empty() {
        Ok(None)
    } else {
        parse_time(occurred_at, inbox.date_format.as_deref())
            .map(Some)
            .map_err(InputError::bad_request)
    };
    let quantity = number("qty", layout.cell(cells, Field::Qty)).map_err(api)?;
    let reason = layout.cell(cells, Field::Reason);
    // The type's qualifier: its own column when the layout has one and the cell
    // is filled, else the `reason` cell.
    let qualifier = |own: Field| {
        let cell = layout.cell(cells, own);
        if layout.has(own) && !cell.is_empty() {
            cell
        } else {
            reason
        }
    };
    match kind {
        "receipt" => fields.qty = quantity,
        "adjustment" => {
            fields.delta = quantity;
            fields.reason = keyword::<AdjustReason>(
                "reason",
                reason,
                "damage, shrink, found, correction, short_pick",
            )
            .map_err(api)?;
        }
        "count" => {
            fields.counted = quantity;
            let version = layout.cell(cells, Field::ExpectedVersion);
            if !version.is_empty() {
                fields.expected_version = Some(version.parse().map_err(|_| {
                    api(InputError::bad_request(format!(
                        "expected_version {version:?} is not a version number"
                    )))
                })?);
            }
        }
        "return" => {
            fields.qty = quantity;
            fields.restockable = Some(restockable(qualifier(Field::Restockable)).map_err(api)?);
        }
        "quarantine" => {
            fields.qty = quantity;
            fields.action = keyword::<QuarantineAction>(
                "action",
                qualifier(Field::Action),
                "hold, release, scrap",
            )
            .map_err(api)?;
        }
        // in_transit: signed, like an adjustment (inbound +, arrived or cancelled -).
        _ => fields.delta = quantity,
    }
    // Source authority is the engine's to check, on every path alike.
    let event = validate_event(fields).map_err(api)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Command;

    fn config(inbox: &str) -> Config {
        let text = format!(
            "[[locations]]\nid = \"3pl-north\"\nkind = \"3pl\"\n\
             [[locations]]\nid = \"wh-east\"\nkind = \"warehouse\"\n\
             [[inbox]]\ndir = \"./in\"\nsource = \"north\"\n{inbox}\n"
        );
        Config::from_toml_str(&text, "test.toml", &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn header(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    fn event(config: &Config, layout: &Layout, cells: &[&str]) -> Result<WarehouseEvent, RowError> {
        let context = RowContext {
            config,
            inbox: &config.inbox[0],
            layout,
            file: "f.csv",
        };
        row_event(&context, "inbox-abc-2".to_string(), 2, cells)
    }

    fn code(result: Result<WarehouseEvent, RowError>) -> &'static str {
        match result {
            Ok(event) => panic!("accepted {event:?}"),
            Err(error) => error.code,
        }
    }

    #[test]
    fn the_default_layout() {
        let config = config("");
        let head = header(&["\u{feff}SKU", "location", "Type", "qty", "reason"]);
        let layout = Layout::resolve(&config.inbox[0], Some(&head)).expect("layout");
        assert_eq!(layout.width(), 4);
        let receipt = event(&config, &layout, &["s1", "wh-east", "receipt", "5", ""]).expect("ok");
        assert_eq!(receipt.source, "north");
        assert_eq!(receipt.event_id, "inbox-abc-2");
        assert!(matches!(
            receipt.command.position(), Some(Command::Receipt { qty }) if qty.get() == 5));
        let adjust = event(
            &config,
            &layout,
            &["s1", "wh-east", "adjustment", "-3", "Damage"],
        )
        .expect("ok");
        assert!(matches!(
            adjust.command.position(),
            Some(Command::Adjust {
                delta: -3,
                reason: AdjustReason::Damage
            })
        ));
        let count = event(&config, &layout, &["s1", "wh-east", "count", "0"]).expect("ok");
        assert!(matches!(
            count.command.position(),
            Some(Command::Count {
                counted: 0,
                expected_version: None
            })
        ));
        let hold = event(
            &config,
            &layout,
            &["s1", "wh-east", "quarantine", "2", "hold"],
        )
        .expect("ok");
        assert!(matches!(
            hold.command.position(),
            Some(Command::Quarantine {
                action: QuarantineAction::Hold,
                ..
            })
        ));
        let back = event(&config, &layout, &["s1", "wh-east", "return", "1", ""]).expect("ok");
        assert!(matches!(
            back.command.position(),
            Some(Command::Return {
                restockable: false,
                ..
            })
        ));
        let back = event(
            &config,
            &layout,
            &["s1", "wh-east", "return", "1", "restockable"],
        )
        .expect("ok");
        assert!(matches!(
            back.command.position(),
            Some(Command::Return {
                restockable: true,
                ..
            })
        ));
        let inbound = event(
            &config,
            &layout,
            &["s1", "wh-east", "in_transit", "+7", "po-1"],
        )
        .expect("ok");
        assert!(matches!(
            inbound.command.position(),
            Some(Command::InTransit { delta: 7 })
        ));
        // A note in `reason` does not matter to types without a qualifier.
        event(
            &config,
            &layout,
            &["s1", "wh-east", "receipt", "5", "PO 12"],
        )
        .expect("ok");

        assert_eq!(
            code(event(&config, &layout, &["s1", "wh-east", "receipt"])),
            "bad_request"
        );
        assert_eq!(
            code(event(&config, &layout, &["s1", "wh-east", "receipt", "0"])),
            "quantity_out_of_range"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "receipt", "1.5"]
            )),
            "quantity_out_of_range"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "receipt", "ten"]
            )),
            "bad_request"
        );
        assert_eq!(
            code(event(&config, &layout, &["s1", "wh-east", "receipt", ""])),
            "bad_request"
        );
        assert_eq!(
            code(event(&config, &layout, &["s 1", "wh-east", "receipt", "1"])),
            "invalid_id"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "adjustment", "0", "found"]
            )),
            "quantity_out_of_range"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "adjustment", "4", "lost"]
            )),
            "bad_request"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "adjustment", "4", ""]
            )),
            "bad_request"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "quarantine", "4", ""]
            )),
            "bad_request"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "return", "4", "maybe"]
            )),
            "bad_request"
        );
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["s1", "wh-east", "transfer_out", "4"]
            )),
            "unsupported_type"
        );
        assert_eq!(
            code(event(&config, &layout, &["s1", "wh-east", "teleport", "4"])),
            "unsupported_type"
        );
        assert_eq!(
            code(event(&config, &layout, &["s1", "wh-east", "", "4"])),
            "unsupported_type"
        );
        let error =
            event(&config, &layout, &["s1", "wh-east", "transfer_in", "4"]).expect_err("refused");
        assert_eq!(error.type_label, "transfer_in");
        assert_eq!(error.sku.as_deref(), Some("s1"));
    }

    #[test]
    fn a_partner_layout_with_mapping() {
        let config = config(
            r#"delimiter = ";"
columns = { sku = "Item", location = "Whse", type = "Txn", qty = "Units", reason = "Why", occurred_at = "When" }
date_format = "%d/%m/%Y %H:%M"
mapping = { skus = { "P-100" = "SKU-100" }, locations = { "N1" = "3pl-north" }, types = { "RCV" = "receipt", "ADJ" = "adjustment" } }"#,
        );
        let head = header(&["When", "Item", "Whse", "Txn", "Units", "Why"]);
        let layout = Layout::resolve(&config.inbox[0], Some(&head)).expect("layout");
        let receipt = event(
            &config,
            &layout,
            &["05/03/2024 14:30", "P-100", "N1", "RCV", "12", ""],
        )
        .expect("ok");
        assert_eq!(
            (receipt.sku.as_str(), receipt.location.as_str()),
            ("SKU-100", "3pl-north")
        );
        assert_eq!(receipt.type_name, "receipt");
        let expected = chrono::DateTime::parse_from_rfc3339("2024-03-05T14:30:00Z").expect("time");
        assert_eq!(receipt.occurred_at_ms, Some(expected.timestamp_millis()));
        // Unmapped codes are used as they are.
        let adjust = event(
            &config,
            &layout,
            &["", "SKU-9", "wh-east", "ADJ", "-1", "shrink"],
        )
        .expect("ok");
        assert_eq!(
            (adjust.sku.as_str(), adjust.location.as_str()),
            ("SKU-9", "wh-east")
        );
        assert_eq!(adjust.occurred_at_ms, None);
        assert_eq!(
            code(event(
                &config,
                &layout,
                &["2024-03-05", "P-100", "N1", "RCV", "1", ""]
            )),
            "bad_request"
        );
        // The header must carry what the layout names.
        let missing = Layout::resolve(&config.inbox[0], Some(&header(&["Item", "Whse", "Txn"])));
        assert!(missing
            .expect_err("missing")
            .contains("\"Units\" (columns.qty)"));
    }

    #[test]
    fn headerless_and_default_type() {
        let config = config("has_header = false\ncolumns = { sku = 2, location = 1, qty = 3 }\ndefault_type = \"count\"");
        let layout = Layout::resolve(&config.inbox[0], None).expect("layout");
        assert_eq!(layout.width(), 3);
        let count = event(&config, &layout, &["wh-east", "s1", "40"]).expect("ok");
        assert!(matches!(
            count.command.position(),
            Some(Command::Count { counted: 40, .. })
        ));
        let plain = config_default_positions();
        let layout = Layout::resolve(&plain.inbox[0], None).expect("layout");
        let receipt = event(&plain, &layout, &["s1", "wh-east", "receipt", "3"]).expect("ok");
        assert!(matches!(
            receipt.command.position(),
            Some(Command::Receipt { .. })
        ));
    }

    fn config_default_positions() -> Config {
        config("has_header = false")
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z", None), Ok(1000));
        assert_eq!(parse_time("1970-01-02", Some("%Y-%m-%d")), Ok(86_400_000));
        assert_eq!(
            parse_time("1970-01-01 01:00:00 +0100", Some("%Y-%m-%d %H:%M:%S %z")),
            Ok(0)
        );
        assert!(parse_time("yesterday", None).is_err());
    }

    #[test]
    fn payload_keeps_the_row() {
        let config = config("");
        let head = header(&["sku", "location", "type", "qty"]);
        let layout = Layout::resolve(&config.inbox[0], Some(&head)).expect("layout");
        let payload: Value =
            serde_json::from_str(&layout.payload("f.csv", 7, &["a", "b", "c", "d", "extra"]))
                .expect("json");
        assert_eq!(payload["file"], "f.csv");
        assert_eq!(payload["line"], 7);
        assert_eq!(payload["row"]["qty"], "d");
        assert_eq!(payload["row"]["column_5"], "extra");
    }
}
