//! Every stable error code stockwire answers, in one table: its text, the
//! HTTP status it is answered with (none for codes that only appear per
//! event, per inbox row or per file) and what it means. The HTTP layer's
//! statuses and problem+json `code`s, the OpenAPI document's error
//! descriptions, the per-event results and the inbox's rejected rows and
//! files take their codes from here; docs/API.md's table is checked against
//! it. (An exception of kind `oversold`, `transfer_discrepancy` or
//! `transfer_overdue` carries its kind as its code; a reconciliation
//! difference carries why it was not corrected, or `on_hand_differs`.)

/// A stable error code (SPEC §2, and the additions in docs/API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    BadRequest,
    UnknownField,
    InvalidId,
    QuantityOutOfRange,
    Unauthorized,
    Forbidden,
    NotFound,
    UnknownSku,
    UnknownLocation,
    UnknownChannel,
    InsufficientAvailable,
    InvalidState,
    VersionConflict,
    IdempotencyKeyReused,
    PayloadTooLarge,
    RequestTimeout,
    HeadersTooLarge,
    RateLimited,
    Unavailable,
    SourceNotAuthoritative,
    UnsupportedType,
    RowTooLarge,
    MissingColumn,
    NotCsv,
    FileTooLarge,
    Unreadable,
}

/// One row of the table.
pub struct Entry {
    pub code: Code,
    pub text: &'static str,
    /// The HTTP status a request failing with it gets; `None`: never an
    /// HTTP status (only in event results, exceptions or inbox files).
    pub status: Option<u16>,
    pub meaning: &'static str,
}

const fn entry(
    code: Code,
    text: &'static str,
    status: Option<u16>,
    meaning: &'static str,
) -> Entry {
    Entry {
        code,
        text,
        status,
        meaning,
    }
}

/// The table, in the order docs/API.md lists it.
pub const TABLE: &[Entry] = &[
    entry(
        Code::BadRequest,
        "bad_request",
        Some(400),
        "malformed request",
    ),
    entry(
        Code::UnknownField,
        "unknown_field",
        Some(400),
        "a field the schema does not have",
    ),
    entry(
        Code::InvalidId,
        "invalid_id",
        Some(400),
        "an id that is not 1-64 of [A-Za-z0-9._:-]",
    ),
    entry(
        Code::QuantityOutOfRange,
        "quantity_out_of_range",
        Some(400),
        "a quantity outside its range",
    ),
    entry(
        Code::NotFound,
        "not_found",
        Some(404),
        "no such object or route",
    ),
    entry(
        Code::UnknownSku,
        "unknown_sku",
        Some(404),
        "a SKU with no position at any location",
    ),
    entry(
        Code::UnknownLocation,
        "unknown_location",
        Some(422),
        "a location not in config, or not the channel's",
    ),
    entry(
        Code::UnknownChannel,
        "unknown_channel",
        Some(422),
        "a channel not in config",
    ),
    entry(
        Code::InsufficientAvailable,
        "insufficient_available",
        Some(409),
        "a line is short",
    ),
    entry(
        Code::InvalidState,
        "invalid_state",
        Some(409),
        "a transition the current state does not allow",
    ),
    entry(
        Code::VersionConflict,
        "version_conflict",
        Some(409),
        "a stale expected_version",
    ),
    entry(
        Code::IdempotencyKeyReused,
        "idempotency_key_reused",
        Some(422),
        "the same Idempotency-Key with another request",
    ),
    entry(
        Code::PayloadTooLarge,
        "payload_too_large",
        Some(413),
        "a body over max_body_bytes",
    ),
    entry(
        Code::RequestTimeout,
        "request_timeout",
        Some(408),
        "a request body that stalled: nothing of it for 30 s",
    ),
    entry(
        Code::Unauthorized,
        "unauthorized",
        Some(401),
        "no key, or a key not in config",
    ),
    entry(
        Code::Forbidden,
        "forbidden",
        Some(403),
        "outside the key's role or scope",
    ),
    entry(
        Code::RateLimited,
        "rate_limited",
        Some(429),
        "over the key's rate limit (Retry-After)",
    ),
    entry(
        Code::SourceNotAuthoritative,
        "source_not_authoritative",
        None,
        "the source may not post this type at this location",
    ),
    entry(
        Code::HeadersTooLarge,
        "headers_too_large",
        Some(431),
        "request line and headers over max_header_bytes",
    ),
    entry(
        Code::Unavailable,
        "unavailable",
        Some(503),
        "recovering, back-pressure or a failed journal (Retry-After)",
    ),
    entry(
        Code::UnsupportedType,
        "unsupported_type",
        None,
        "an inbox row's event type that inboxes do not take",
    ),
    entry(
        Code::RowTooLarge,
        "row_too_large",
        None,
        "an inbox row over the row size limit",
    ),
    entry(
        Code::MissingColumn,
        "missing_column",
        None,
        "an inbox file without a required column",
    ),
    entry(
        Code::NotCsv,
        "not_csv",
        None,
        "an inbox file that is not CSV",
    ),
    entry(
        Code::FileTooLarge,
        "file_too_large",
        None,
        "an inbox file over the size limit",
    ),
    entry(
        Code::Unreadable,
        "unreadable",
        None,
        "an inbox file that cannot be opened as a regular file",
    ),
];

impl Code {
    fn entry(self) -> &'static Entry {
        // Every variant has exactly one row (the tests below check it).
        TABLE
            .iter()
            .find(|entry| entry.code == self)
            .unwrap_or(&TABLE[0])
    }

    /// The code as answered (`"invalid_state"`).
    pub fn as_str(self) -> &'static str {
        self.entry().text
    }

    /// The HTTP status of a request that fails with it, if it has one.
    pub fn status(self) -> Option<u16> {
        self.entry().status
    }

    /// The code named `text`, if it is one of the table's.
    pub fn parse(text: &str) -> Option<Code> {
        TABLE
            .iter()
            .find(|entry| entry.text == text)
            .map(|entry| entry.code)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every code with an HTTP status, grouped by status (ascending), for the
/// OpenAPI document's error responses, each as `code (meaning)`.
pub fn by_status() -> Vec<(u16, Vec<String>)> {
    let mut groups: Vec<(u16, Vec<String>)> = Vec::new();
    for entry in TABLE {
        let Some(status) = entry.status else { continue };
        let described = format!("{} ({})", entry.text, entry.meaning);
        match groups.iter_mut().find(|(s, _)| *s == status) {
            Some((_, codes)) => codes.push(described),
            None => groups.push((status, vec![described])),
        }
    }
    groups.sort_by_key(|(status, _)| *status);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_row_and_every_text_is_unique_snake_case() {
        for (i, a) in TABLE.iter().enumerate() {
            assert_eq!(a.code.entry().text, a.text, "{:?} has two rows", a.code);
            assert!(
                a.text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                a.text
            );
            for b in &TABLE[i + 1..] {
                assert_ne!(a.text, b.text);
                assert_ne!(a.code, b.code);
            }
            assert_eq!(Code::parse(a.text), Some(a.code));
        }
        assert_eq!(Code::parse("nonsense"), None);
    }

    /// docs/API.md's error table lists exactly these codes, each with its
    /// status ("per event", "per row", "per file" for codes without one).
    #[test]
    fn the_api_reference_lists_every_code_with_its_status() {
        let doc = include_str!("../docs/API.md");
        let mut listed = Vec::new();
        for line in doc.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 || !cells[1].starts_with('`') {
                continue;
            }
            let text = cells[1].trim_matches('`');
            let documented = cells[2];
            let Some(code) = Code::parse(text) else {
                // Another table's row, unless it reads like a code's.
                let like_a_code = documented.len() == 3
                    && documented.bytes().all(|b| b.is_ascii_digit())
                    || documented.starts_with("per ");
                assert!(
                    !like_a_code,
                    "docs/API.md lists {text}, which src/codes.rs does not have"
                );
                continue;
            };
            match code.status() {
                Some(status) => assert_eq!(documented, status.to_string(), "{text}"),
                None => assert!(documented.starts_with("per "), "{text}: {documented}"),
            }
            listed.push(code);
        }
        for entry in TABLE {
            assert!(
                listed.contains(&entry.code),
                "docs/API.md does not list {}",
                entry.text
            );
        }
    }
}
