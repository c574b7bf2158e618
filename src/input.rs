//! Input validation shared by every way requests and events come in, with no
//! HTTP in it: ids, quantities, timestamps, and one warehouse event. The JSON
//! body of `POST /v1/events` (`api::events`) and the rows of 3PL inbox files
//! (`crate::ingest`) each turn their own encoding into [`EventFields`];
//! [`validate_event`] checks ids, the type, which fields the type takes and every
//! quantity, in one order. A refusal is an [`InputError`]: a code of
//! [`crate::codes`] and a detail, which the API answers as problem+json and an
//! inbox writes into its rejected rows.
//!
//! It must not read state or the clock: whether a location is configured and
//! whether the position allows the change are the engine's to answer.

use crate::codes::Code;
use crate::config::{is_valid_id, EVENT_TYPES};
use crate::domain::{AdjustReason, Command, QuarantineAction};
use crate::domain::{Qty, QTY_MAX};
use crate::engine::{EventCommand, WarehouseEvent};

/// Why an input was refused: its stable code and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct InputError {
    pub code: Code,
    pub detail: String,
}

impl InputError {
    pub fn bad_request(detail: impl Into<String>) -> InputError {
        InputError {
            code: Code::BadRequest,
            detail: detail.into(),
        }
    }

    pub fn unknown_field(detail: impl Into<String>) -> InputError {
        InputError {
            code: Code::UnknownField,
            detail: detail.into(),
        }
    }

    fn out_of_range(detail: String) -> InputError {
        InputError {
            code: Code::QuantityOutOfRange,
            detail,
        }
    }
}

pub fn check_id<'a>(what: &str, id: &'a str) -> Result<&'a str, InputError> {
    if is_valid_id(id) {
        Ok(id)
    } else {
        Err(InputError {
            code: Code::InvalidId,
            detail: format!("{what} must be 1-64 characters from [A-Za-z0-9._:-]"),
        })
    }
}

/// A quantity in `1..=QTY_MAX`; any other number (zero, negative, fraction,
/// huge) is `quantity_out_of_range`.
pub fn qty(what: &str, number: &serde_json::Number) -> Result<Qty, InputError> {
    number.as_u64().and_then(Qty::new).ok_or_else(|| {
        InputError::out_of_range(format!("{what} must be an integer in 1..={QTY_MAX}"))
    })
}

/// A non-zero delta within `±QTY_MAX`.
pub fn delta(what: &str, number: &serde_json::Number) -> Result<i64, InputError> {
    number
        .as_i64()
        .filter(|d| *d != 0 && d.unsigned_abs() <= QTY_MAX)
        .ok_or_else(|| {
            InputError::out_of_range(format!(
                "{what} must be a non-zero integer within ±{QTY_MAX}"
            ))
        })
}

/// A setting or count in `0..=QTY_MAX`.
pub fn amount(what: &str, number: &serde_json::Number) -> Result<u64, InputError> {
    number.as_u64().filter(|n| *n <= QTY_MAX).ok_or_else(|| {
        InputError::out_of_range(format!("{what} must be an integer in 0..={QTY_MAX}"))
    })
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An RFC 3339 timestamp as milliseconds since the epoch.
pub fn parse_rfc3339(what: &str, text: &str) -> Result<i64, InputError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| InputError::bad_request(format!("{what} must be an RFC 3339 timestamp")))
}

/// One event as its encoding gave it, not yet validated. Quantities stay numbers
/// as written (`serde_json::Number`), so a fraction or a huge value is refused
/// here the same way whatever the encoding.
#[derive(Debug)]
pub struct EventFields {
    pub event_id: String,
    pub kind: String,
    pub source: String,
    /// `occurred_at` read in the caller's own format; an error in it is reported
    /// after the ids are checked (so JSON answers the same as before this was shared).
    pub occurred_at_ms: Result<Option<i64>, InputError>,
    pub sku: String,
    pub location: String,
    pub qty: Option<serde_json::Number>,
    pub delta: Option<serde_json::Number>,
    pub reason: Option<AdjustReason>,
    pub counted: Option<serde_json::Number>,
    pub expected_version: Option<u64>,
    pub restockable: Option<bool>,
    pub action: Option<QuarantineAction>,
    pub transfer_id: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    /// The event as received, kept with a rejection.
    pub payload: String,
}

impl EventFields {
    /// Fields with ids and type set and everything else absent.
    pub fn new(event_id: String, kind: String, source: String, payload: String) -> EventFields {
        EventFields {
            event_id,
            kind,
            source,
            occurred_at_ms: Ok(None),
            sku: String::new(),
            location: String::new(),
            qty: None,
            delta: None,
            reason: None,
            counted: None,
            expected_version: None,
            restockable: None,
            action: None,
            transfer_id: None,
            to: None,
            from: None,
            payload,
        }
    }
}

fn required<T: Clone>(field: &Option<T>, name: &str, kind: &str) -> Result<T, InputError> {
    field
        .clone()
        .ok_or_else(|| InputError::bad_request(format!("{kind} needs `{name}`")))
}

/// Fields that only some types take must not appear on others.
fn only(present: &[(&str, bool)], allowed: &[&str], kind: &str) -> Result<(), InputError> {
    for (name, is_present) in present {
        if *is_present && !allowed.contains(name) {
            return Err(InputError::unknown_field(format!(
                "`{name}` does not apply to {kind}"
            )));
        }
    }
    Ok(())
}

fn to_command(body: &EventFields) -> Result<(&'static str, EventCommand), InputError> {
    let kind = EVENT_TYPES
        .iter()
        .find(|t| **t == body.kind)
        .copied()
        .ok_or_else(|| InputError::bad_request(format!("unknown event type {}", body.kind)))?;
    let present = [
        ("qty", body.qty.is_some()),
        ("delta", body.delta.is_some()),
        ("reason", body.reason.is_some()),
        ("counted", body.counted.is_some()),
        ("expected_version", body.expected_version.is_some()),
        ("restockable", body.restockable.is_some()),
        ("action", body.action.is_some()),
        ("transfer_id", body.transfer_id.is_some()),
        ("to", body.to.is_some()),
        ("from", body.from.is_some()),
    ];
    let command = match kind {
        "receipt" => {
            only(&present, &["qty"], kind)?;
            Command::Receipt {
                qty: qty("qty", &required(&body.qty, "qty", kind)?)?,
            }
        }
        "adjustment" => {
            only(&present, &["delta", "reason"], kind)?;
            Command::Adjust {
                delta: delta("delta", &required(&body.delta, "delta", kind)?)?,
                reason: required(&body.reason, "reason", kind)?,
            }
        }
        "count" => {
            only(&present, &["counted", "expected_version"], kind)?;
            Command::Count {
                counted: amount("counted", &required(&body.counted, "counted", kind)?)?,
                expected_version: body.expected_version,
            }
        }
        "return" => {
            only(&present, &["qty", "restockable"], kind)?;
            Command::Return {
                qty: qty("qty", &required(&body.qty, "qty", kind)?)?,
                restockable: required(&body.restockable, "restockable", kind)?,
            }
        }
        "quarantine" => {
            only(&present, &["qty", "action"], kind)?;
            Command::Quarantine {
                qty: qty("qty", &required(&body.qty, "qty", kind)?)?,
                action: required(&body.action, "action", kind)?,
            }
        }
        "in_transit" => {
            only(&present, &["qty", "delta"], kind)?;
            let change = match (&body.qty, &body.delta) {
                (Some(n), None) => qty("qty", n)?.get() as i64,
                (None, Some(d)) => delta("delta", d)?,
                _ => {
                    return Err(InputError::bad_request(
                        "in_transit needs exactly one of `qty` (inbound) or `delta`".to_string(),
                    ))
                }
            };
            Command::InTransit { delta: change }
        }
        "transfer_out" => {
            only(&present, &["qty", "transfer_id", "to"], kind)?;
            let transfer_id = required(&body.transfer_id, "transfer_id", kind)?;
            let to = required(&body.to, "to", kind)?;
            check_id("transfer_id", &transfer_id)?;
            check_id("to", &to)?;
            return Ok((
                kind,
                EventCommand::TransferOut {
                    transfer_id,
                    to,
                    qty: qty("qty", &required(&body.qty, "qty", kind)?)?,
                },
            ));
        }
        "transfer_in" => {
            only(&present, &["qty", "transfer_id", "from"], kind)?;
            let transfer_id = required(&body.transfer_id, "transfer_id", kind)?;
            let from = required(&body.from, "from", kind)?;
            check_id("transfer_id", &transfer_id)?;
            check_id("from", &from)?;
            return Ok((
                kind,
                EventCommand::TransferIn {
                    transfer_id,
                    from,
                    qty: qty("qty", &required(&body.qty, "qty", kind)?)?,
                },
            ));
        }
        other => {
            return Err(InputError::bad_request(format!(
                "unknown event type {other}"
            )))
        }
    };
    Ok((kind, command.into()))
}

/// Checks one event: ids, then `occurred_at`, then the type and its fields.
pub fn validate_event(mut fields: EventFields) -> Result<WarehouseEvent, InputError> {
    check_id("event_id", &fields.event_id)?;
    check_id("source", &fields.source)?;
    check_id("sku", &fields.sku)?;
    check_id("location", &fields.location)?;
    let occurred_at_ms = std::mem::replace(&mut fields.occurred_at_ms, Ok(None))?;
    let (kind, command) = to_command(&fields)?;
    Ok(WarehouseEvent {
        event_id: fields.event_id,
        type_name: kind,
        source: fields.source,
        occurred_at_ms,
        sku: fields.sku,
        location: fields.location,
        command,
        payload: fields.payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(qty: &str) -> EventFields {
        let mut fields = EventFields::new(
            "e-1".to_string(),
            "receipt".to_string(),
            "wms".to_string(),
            "{}".to_string(),
        );
        fields.sku = "sku-1".to_string();
        fields.location = "wh-east".to_string();
        fields.qty = qty.parse().ok();
        fields
    }

    fn code(result: Result<WarehouseEvent, InputError>) -> &'static str {
        match result {
            Ok(event) => panic!("accepted {event:?}"),
            Err(error) => error.code.as_str(),
        }
    }

    #[test]
    fn a_valid_receipt() {
        let event = validate_event(receipt("5")).expect("valid");
        assert_eq!(event.type_name, "receipt");
        assert!(matches!(
            event.command.position(), Some(Command::Receipt { qty }) if qty.get() == 5));
    }

    #[test]
    fn errors_in_their_order() {
        let mut bad_id_and_time = receipt("5");
        bad_id_and_time.sku = "a b".to_string();
        bad_id_and_time.occurred_at_ms = Err(InputError::bad_request("bad time".to_string()));
        assert_eq!(code(validate_event(bad_id_and_time)), "invalid_id");
        let mut bad_time = receipt("0");
        bad_time.occurred_at_ms = Err(InputError::bad_request("bad time".to_string()));
        assert_eq!(code(validate_event(bad_time)), "bad_request");
        assert_eq!(code(validate_event(receipt("0"))), "quantity_out_of_range");
        assert_eq!(
            code(validate_event(receipt("1.5"))),
            "quantity_out_of_range"
        );
        assert_eq!(code(validate_event(receipt("x"))), "bad_request");
        let mut extra = receipt("5");
        extra.reason = Some(AdjustReason::Damage);
        assert_eq!(code(validate_event(extra)), "unknown_field");
    }
}
