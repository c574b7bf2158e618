//! Feed files written by a "file" channel sink. The parsers that read them
//! back (`parse_csv`, `parse_edi846`) are in `parse.rs`, compiled for tests only.
//!
//! Two formats are produced from the same [`FeedLine`]s:
//!
//! * **CSV** ([`render_csv`] / `parse_csv`): header `sku,available,seq,at`, one row
//!   per line, `\n` line endings, `at` as RFC 3339 UTC with milliseconds and a `Z`
//!   (`2026-11-26T21:03:04.005Z`).
//! * **ANSI X12 004010 846 Inventory Inquiry/Advice** ([`render_edi846`] /
//!   `parse_edi846`). The 846 is the transaction set EDI retail partners ingest for
//!   inventory advice, so a channel that speaks EDI can take our availability as-is.
//!   One interchange holds one functional group holding one transaction set:
//!
//! ```text
//! ISA*00*<10 sp>*00*<10 sp>*ZZ*<sender/15>*ZZ*<receiver/15>*YYMMDD*HHMM*U*00401*<ctl/9>*0*<T|P>*>~
//! GS*IB*<sender>*<receiver>*CCYYMMDD*HHMM*<ctl>*X*004010~
//! ST*846*<ctl, at least 4 digits>~
//! BIA*00*DD*SW<ctl>*CCYYMMDD~        00 = original, DD = distributor inventory report
//! LIN**SK*<sku>~                     per line: the SKU ...
//! QTY*33*<available>*EA~             ... and its quantity available for sale, in eaches
//! CTT*<number of LIN>~
//! SE*<segments ST..SE inclusive>*<ST02>~
//! GE*1*<ctl>~
//! IEA*1*<ctl/9>~
//! ```
//!
//! Elements are separated by `*`, composites by `>` (ISA16), and every segment ends with
//! `~` followed by a `\n` for readability; the parser accepts `~`, `~\n` or `~\r\n`. The
//! ISA segment is fixed-width: exactly 106 characters including its `~`. All control
//! numbers come from [`Envelope::control_number`]. Times are UTC.
//!
//! The renderers validate their input and return a [`FeedError`] rather than produce an
//! invalid document; the 846 parser checks the envelope (ISA widths, IEA/GE/SE counts and
//! control numbers, CTT hash, LIN/QTY pairing) and names the check that failed.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

/// One line of a feed: what the channel may sell of one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedLine {
    /// SKU id, `[A-Za-z0-9._:-]{1,64}`.
    pub sku: String,
    /// Units the channel may sell.
    pub available: u64,
    /// Sequence number of the change this line reflects.
    pub seq: u64,
    /// When the line was computed, in milliseconds since the Unix epoch (UTC).
    pub at_ms: i64,
}

/// Interchange envelope data for an 846 document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Interchange sender id (ISA06, GS02): 1–15 characters of `[A-Za-z0-9 .-]`.
    pub sender_id: String,
    /// Interchange receiver id (ISA08, GS03): 1–15 characters of `[A-Za-z0-9 .-]`.
    pub receiver_id: String,
    /// Interchange, group and transaction set control number, `1..=999_999_999`.
    pub control_number: u32,
    /// Document time in milliseconds since the Unix epoch (UTC).
    pub at_ms: i64,
    /// Test (`ISA15 = T`) rather than production (`P`) interchange.
    pub test: bool,
}

/// Why a feed could not be rendered or parsed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A SKU id does not match `[A-Za-z0-9._:-]{1,64}` (or is too long for X12).
    #[error("invalid SKU {sku:?}: {reason}")]
    InvalidSku {
        /// The offending SKU.
        sku: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An interchange sender or receiver id is unusable.
    #[error("invalid {role} id {id:?}: {reason}")]
    InvalidPartyId {
        /// `"sender"` or `"receiver"`.
        role: &'static str,
        /// The offending id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The control number is not in `1..=999_999_999`.
    #[error("control number {0} is out of range: it must be in 1..=999999999")]
    ControlNumberOutOfRange(u32),
    /// An 846 was asked for with no lines; X12 has no empty transaction sets.
    #[error("an 846 needs at least one line: X12 does not allow an empty transaction set")]
    EmptyFeed,
    /// A quantity does not fit X12 QTY02 (at most 15 digits).
    #[error("quantity {available} for SKU {sku:?} exceeds the 15 digits X12 QTY02 allows")]
    QuantityTooLarge {
        /// The SKU of the line.
        sku: String,
        /// The quantity that does not fit.
        available: u64,
    },
    /// More lines than X12 CTT01 can count (at most 6 digits).
    #[error("{count} lines exceed the 999999 line items X12 CTT01 can count")]
    TooManyLines {
        /// Number of lines given.
        count: usize,
    },
    /// A timestamp is outside the years 0000–9999.
    #[error("timestamp {at_ms} ms is outside the years 0000-9999")]
    TimestampOutOfRange {
        /// The offending timestamp.
        at_ms: i64,
    },
    /// The CSV reader or writer failed.
    #[error("CSV error: {0}")]
    Csv(#[from] csv::Error),
    /// The CSV header is not `sku,available,seq,at`.
    #[error("CSV header must be `sku,available,seq,at`, found `{found}`")]
    CsvHeader {
        /// The header found.
        found: String,
    },
    /// A CSV record has a bad value.
    #[error("CSV line {line}: {reason}")]
    CsvRecord {
        /// 1-based line number in the input.
        line: u64,
        /// What is wrong with the record.
        reason: String,
    },
    /// An 846 document failed a check while parsing.
    #[error("EDI 846 check `{check}` failed: {detail}")]
    Edi {
        /// Short name of the check, e.g. `"SE01 segment count"`.
        check: &'static str,
        /// What was found.
        detail: String,
    },
}

const CSV_HEADER: [&str; 4] = ["sku", "available", "seq", "at"];
const SKU_MAX: usize = 64;
/// X12 data element 234 (Product/Service ID, LIN03) is AN 1/48.
const X12_SKU_MAX: usize = 48;
/// X12 data element 380 (Quantity, QTY02) is R 1/15.
const X12_QTY_MAX: u64 = 999_999_999_999_999;
/// X12 data element 354 (Number of Line Items, CTT01) is N0 1/6.
const X12_LINES_MAX: usize = 999_999;
const CONTROL_MAX: u32 = 999_999_999;
const PARTY_MAX: usize = 15;

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

fn check_sku(sku: &str) -> Result<(), FeedError> {
    let reason = if sku.is_empty() {
        Some("empty".to_string())
    } else if sku.len() > SKU_MAX {
        Some(format!(
            "{} characters, at most {SKU_MAX} allowed",
            sku.len()
        ))
    } else {
        sku.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
            .map(|c| format!("character {c:?} is not in [A-Za-z0-9._:-]"))
    };
    match reason {
        Some(reason) => Err(FeedError::InvalidSku {
            sku: sku.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn utc(at_ms: i64) -> Result<DateTime<Utc>, FeedError> {
    DateTime::from_timestamp_millis(at_ms)
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or(FeedError::TimestampOutOfRange { at_ms })
}

// ---------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------

/// Renders `lines` as CSV: header `sku,available,seq,at`, one `\n`-terminated row per
/// line, `at` as RFC 3339 UTC with milliseconds (`2026-11-26T21:03:04.005Z`).
///
/// An empty `lines` gives just the header. Fails on an invalid SKU or a timestamp outside
/// the years 0000–9999.
pub fn render_csv(lines: &[FeedLine]) -> Result<Vec<u8>, FeedError> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    for line in lines {
        check_sku(&line.sku)?;
        let at = utc(line.at_ms)?.to_rfc3339_opts(SecondsFormat::Millis, true);
        writer.write_record([
            line.sku.as_str(),
            &line.available.to_string(),
            &line.seq.to_string(),
            &at,
        ])?;
    }
    writer
        .into_inner()
        .map_err(|e| FeedError::Csv(csv::Error::from(e.into_error())))
}

// ---------------------------------------------------------------------------------------
// X12 846: rendering
// ---------------------------------------------------------------------------------------

/// Whether `id` can be an X12 interchange id (ISA06/ISA08); config checks with this too.
pub fn check_party(role: &'static str, id: &str) -> Result<(), FeedError> {
    let reason = if id.is_empty() {
        Some("empty".to_string())
    } else if let Some(c) = id.chars().find(|c| matches!(c, '*' | '~' | '>')) {
        Some(format!("contains the X12 delimiter {c:?}"))
    } else if let Some(c) = id.chars().find(|c| !c.is_ascii()) {
        Some(format!("contains the non-ASCII character {c:?}"))
    } else if id.len() > PARTY_MAX {
        Some(format!(
            "{} characters, at most {PARTY_MAX} allowed",
            id.len()
        ))
    } else if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '-')))
    {
        Some(format!("character {c:?} is not in [A-Za-z0-9 .-]"))
    } else if id.starts_with(' ') || id.ends_with(' ') {
        Some("leading or trailing spaces would be lost in the padded ISA field".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(FeedError::InvalidPartyId {
            role,
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Whether one line can be carried by an 846 (its SKU as LIN03, its quantity as QTY02).
pub fn check_x12_line(line: &FeedLine) -> Result<(), FeedError> {
    check_x12_sku(&line.sku)?;
    if line.available > X12_QTY_MAX {
        return Err(FeedError::InvalidSku {
            sku: line.sku.clone(),
            reason: format!(
                "quantity {} is over the 846's {X12_QTY_MAX}",
                line.available
            ),
        });
    }
    Ok(())
}

fn check_x12_sku(sku: &str) -> Result<(), FeedError> {
    if let Some(c) = sku.chars().find(|c| matches!(c, '*' | '~' | '>')) {
        return Err(FeedError::InvalidSku {
            sku: sku.to_string(),
            reason: format!("contains the X12 delimiter {c:?}"),
        });
    }
    check_sku(sku)?;
    if sku.len() > X12_SKU_MAX {
        return Err(FeedError::InvalidSku {
            sku: sku.to_string(),
            reason: format!(
                "{} characters, X12 LIN03 (element 234) allows at most {X12_SKU_MAX}",
                sku.len()
            ),
        });
    }
    Ok(())
}

/// Renders `lines` as one X12 004010 846 interchange (see the module docs for the layout).
///
/// Every segment ends with `~\n`. Fails on an empty `lines`, a control number outside
/// `1..=999_999_999`, an unusable sender/receiver id, a SKU that is invalid or longer than
/// X12 allows (48), a quantity over 15 digits, or a timestamp outside the years 0000–9999.
pub fn render_edi846(lines: &[FeedLine], envelope: &Envelope) -> Result<String, FeedError> {
    let ctl = envelope.control_number;
    if !(1..=CONTROL_MAX).contains(&ctl) {
        return Err(FeedError::ControlNumberOutOfRange(ctl));
    }
    check_party("sender", &envelope.sender_id)?;
    check_party("receiver", &envelope.receiver_id)?;
    if lines.is_empty() {
        return Err(FeedError::EmptyFeed);
    }
    if lines.len() > X12_LINES_MAX {
        return Err(FeedError::TooManyLines { count: lines.len() });
    }
    for line in lines {
        check_x12_sku(&line.sku)?;
        if line.available > X12_QTY_MAX {
            return Err(FeedError::QuantityTooLarge {
                sku: line.sku.clone(),
                available: line.available,
            });
        }
    }
    let t = utc(envelope.at_ms)?;
    let yymmdd = format!("{:02}{:02}{:02}", t.year() % 100, t.month(), t.day());
    let ccyymmdd = format!("{:04}{:02}{:02}", t.year(), t.month(), t.day());
    let hhmm = format!("{:02}{:02}", t.hour(), t.minute());
    let st02 = format!("{ctl:04}");
    let (sender, receiver) = (&envelope.sender_id, &envelope.receiver_id);

    let mut segments = Vec::with_capacity(lines.len() * 2 + 8);
    let usage = if envelope.test { "T" } else { "P" };
    let blank = "";
    segments.push(format!(
        "ISA*00*{blank:10}*00*{blank:10}*ZZ*{sender:<15}*ZZ*{receiver:<15}\
         *{yymmdd}*{hhmm}*U*00401*{ctl:09}*0*{usage}*>"
    ));
    segments.push(format!(
        "GS*IB*{sender}*{receiver}*{ccyymmdd}*{hhmm}*{ctl}*X*004010"
    ));
    let st_index = segments.len();
    segments.push(format!("ST*846*{st02}"));
    segments.push(format!("BIA*00*DD*SW{ctl}*{ccyymmdd}"));
    for line in lines {
        segments.push(format!("LIN**SK*{}", line.sku));
        segments.push(format!("QTY*33*{}*EA", line.available));
    }
    segments.push(format!("CTT*{}", lines.len()));
    // ST..CTT already pushed, plus the SE itself.
    let se01 = segments.len() - st_index + 1;
    segments.push(format!("SE*{se01}*{st02}"));
    segments.push(format!("GE*1*{ctl}"));
    segments.push(format!("IEA*1*{ctl:09}"));

    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 2).sum());
    for segment in &segments {
        out.push_str(segment);
        out.push_str("~\n");
    }
    Ok(out)
}

#[cfg(any(test, feature = "test-support"))]
pub mod parse;
#[cfg(any(test, feature = "test-support"))]
pub use parse::{parse_csv, parse_edi846, Parsed846};

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26T21:03:04.005Z
    const AT: i64 = 1_795_726_984_005;

    fn line(sku: &str, available: u64, seq: u64, at_ms: i64) -> FeedLine {
        FeedLine {
            sku: sku.to_string(),
            available,
            seq,
            at_ms,
        }
    }

    fn two_lines() -> Vec<FeedLine> {
        vec![
            line("SKU-1", 7, 10, AT),
            line("ABC:9.x_y", 0, 11, AT + 1_000),
        ]
    }

    fn envelope() -> Envelope {
        Envelope {
            sender_id: "STOCKWIRE".to_string(),
            receiver_id: "RETAILER 01".to_string(),
            control_number: 42,
            at_ms: AT,
            test: true,
        }
    }

    const EXPECTED_846: &str = "\
ISA*00*          *00*          *ZZ*STOCKWIRE      *ZZ*RETAILER 01    *261126*2103*U*00401*000000042*0*T*>~
GS*IB*STOCKWIRE*RETAILER 01*20261126*2103*42*X*004010~
ST*846*0042~
BIA*00*DD*SW42*20261126~
LIN**SK*SKU-1~
QTY*33*7*EA~
LIN**SK*ABC:9.x_y~
QTY*33*0*EA~
CTT*2~
SE*8*0042~
GE*1*42~
IEA*1*000000042~
";

    fn rendered() -> String {
        render_edi846(&two_lines(), &envelope()).unwrap()
    }

    /// Replaces exactly one occurrence of `from`, so a tamper can't silently miss.
    fn tamper(doc: &str, from: &str, to: &str) -> String {
        assert_eq!(doc.matches(from).count(), 1, "{from:?} must occur once");
        doc.replacen(from, to, 1)
    }

    fn edi_check(result: Result<Parsed846, FeedError>) -> &'static str {
        match result {
            Err(FeedError::Edi { check, .. }) => check,
            other => panic!("expected an EDI check failure, got {other:?}"),
        }
    }

    // ---- CSV --------------------------------------------------------------------------

    #[test]
    fn csv_exact_bytes() {
        let bytes = render_csv(&two_lines()).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "sku,available,seq,at\n\
             SKU-1,7,10,2026-11-26T21:03:04.005Z\n\
             ABC:9.x_y,0,11,2026-11-26T21:03:05.005Z\n"
        );
    }

    #[test]
    fn csv_round_trip() {
        let lines = vec![
            line("A", u64::MAX, u64::MAX, 0),
            line("b.c_d:e-f", 3, 0, -1),
            line(&"Z".repeat(64), 12, 99, AT),
        ];
        let bytes = render_csv(&lines).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("1970-01-01T00:00:00.000Z"));
        assert!(text.contains("1969-12-31T23:59:59.999Z"));
        assert_eq!(parse_csv(&bytes).unwrap(), lines);
    }

    #[test]
    fn csv_empty_is_header_only() {
        let bytes = render_csv(&[]).unwrap();
        assert_eq!(bytes, b"sku,available,seq,at\n");
        assert_eq!(parse_csv(&bytes).unwrap(), Vec::<FeedLine>::new());
    }

    #[test]
    fn csv_render_rejects_bad_sku() {
        for sku in ["", "has space", "a,b", "é", &"x".repeat(65)] {
            let err = render_csv(&[line(sku, 1, 1, AT)]).unwrap_err();
            assert!(
                matches!(&err, FeedError::InvalidSku { sku: s, .. } if s == sku),
                "{sku:?}: {err}"
            );
        }
    }

    #[test]
    fn csv_render_rejects_out_of_range_time() {
        // 10000-01-01T00:00:00Z
        let err = render_csv(&[line("A", 1, 1, 253_402_300_800_000)]).unwrap_err();
        assert!(matches!(
            err,
            FeedError::TimestampOutOfRange {
                at_ms: 253_402_300_800_000
            }
        ));
        assert!(render_csv(&[line("A", 1, 1, 253_402_300_799_999)]).is_ok());
    }

    #[test]
    fn csv_parse_accepts_other_offsets() {
        let lines =
            parse_csv(b"sku,available,seq,at\nA,1,2,2026-11-26T22:03:04.005+01:00\n").unwrap();
        assert_eq!(lines, vec![line("A", 1, 2, AT)]);
    }

    #[test]
    fn csv_parse_rejects_bad_header() {
        for input in [
            &b""[..],
            b"sku,available,seq\nA,1,2\n",
            b"sku,qty,seq,at\nA,1,2,2026-11-26T21:03:04.005Z\n",
        ] {
            let err = parse_csv(input).unwrap_err();
            assert!(matches!(err, FeedError::CsvHeader { .. }), "{err}");
        }
        let err = parse_csv(b"sku,available,seq,at,extra\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSV header must be `sku,available,seq,at`, found `sku,available,seq,at,extra`"
        );
    }

    #[test]
    fn csv_parse_rejects_bad_records() {
        let cases: [(&str, u64); 7] = [
            ("A,-1,2,2026-11-26T21:03:04.005Z", 3),
            ("A,1,x,2026-11-26T21:03:04.005Z", 3),
            ("A,+1,2,2026-11-26T21:03:04.005Z", 3),
            ("A,1,2,yesterday", 3),
            ("A,1,2,2026-11-26T21:03:04.0051Z", 3),
            ("bad sku,1,2,2026-11-26T21:03:04.005Z", 3),
            ("A,18446744073709551616,2,2026-11-26T21:03:04.005Z", 3),
        ];
        for (row, want_line) in cases {
            let input = format!("sku,available,seq,at\nOK,1,1,2026-11-26T21:03:04.005Z\n{row}\n");
            match parse_csv(input.as_bytes()) {
                Err(FeedError::CsvRecord { line, .. }) => assert_eq!(line, want_line, "{row}"),
                other => panic!("{row}: expected CsvRecord, got {other:?}"),
            }
        }
    }

    #[test]
    fn csv_parse_rejects_wrong_field_count() {
        let err = parse_csv(b"sku,available,seq,at\nA,1,2\n").unwrap_err();
        assert!(matches!(err, FeedError::Csv(_)), "{err}");
    }

    // ---- 846 rendering ----------------------------------------------------------------

    #[test]
    fn edi846_exact_text() {
        assert_eq!(rendered(), EXPECTED_846);
    }

    #[test]
    fn edi846_isa_is_106_characters() {
        let doc = rendered();
        let isa = doc.lines().next().unwrap();
        assert_eq!(isa.len(), 106);
        assert!(isa.ends_with("*>~"));
        let max = render_edi846(
            &two_lines(),
            &Envelope {
                sender_id: "ABCDEFGHIJKLMNO".to_string(),
                receiver_id: "X".to_string(),
                control_number: 999_999_999,
                test: false,
                ..envelope()
            },
        )
        .unwrap();
        let isa = max.lines().next().unwrap();
        assert_eq!(isa.len(), 106);
        assert!(isa.contains("*ZZ*ABCDEFGHIJKLMNO*ZZ*X              *"));
        assert!(isa.ends_with("*999999999*0*P*>~"));
        assert!(max.contains("\nST*846*999999999~\n"));
        assert!(max.contains("\nSE*8*999999999~\n"));
        assert!(max.ends_with("\nGE*1*999999999~\nIEA*1*999999999~\n"));
    }

    #[test]
    fn edi846_round_trip() {
        let parsed = parse_edi846(&rendered()).unwrap();
        assert_eq!(
            parsed,
            Parsed846 {
                interchange_control: 42,
                group_control: 42,
                transaction_control: "0042".to_string(),
                sender_id: "STOCKWIRE".to_string(),
                receiver_id: "RETAILER 01".to_string(),
                lines: vec![("SKU-1".to_string(), 7), ("ABC:9.x_y".to_string(), 0)],
                segment_count: 8,
            }
        );
    }

    #[test]
    fn edi846_round_trip_many_lines() {
        let lines: Vec<FeedLine> = (0..250)
            .map(|i| line(&format!("SKU{i:03}"), i * 3, i, AT))
            .chain([line(&"L".repeat(48), 999_999_999_999_999, 0, AT)])
            .collect();
        let doc = render_edi846(&lines, &envelope()).unwrap();
        assert!(doc.contains("\nCTT*251~\nSE*506*0042~\n"));
        let parsed = parse_edi846(&doc).unwrap();
        assert_eq!(parsed.segment_count, 2 * 251 + 4);
        let want: Vec<(String, u64)> = lines.iter().map(|l| (l.sku.clone(), l.available)).collect();
        assert_eq!(parsed.lines, want);
    }

    #[test]
    fn edi846_parses_without_newlines_and_with_crlf() {
        let want = parse_edi846(EXPECTED_846).unwrap();
        assert_eq!(
            parse_edi846(&EXPECTED_846.replace("~\n", "~")).unwrap(),
            want
        );
        assert_eq!(
            parse_edi846(&EXPECTED_846.replace("~\n", "~\r\n")).unwrap(),
            want
        );
        // Trailing whitespace after IEA is tolerated.
        assert_eq!(
            parse_edi846(&format!("{EXPECTED_846}\n  \n")).unwrap(),
            want
        );
    }

    #[test]
    fn edi846_tolerates_extra_segments_and_counts_them() {
        let doc = tamper(
            EXPECTED_846,
            "LIN**SK*SKU-1~\nQTY*33*7*EA~\n",
            "LIN**SK*SKU-1~\nDTM*405*20261126~\nQTY*17*3*EA~\nQTY*33*7*EA~\n",
        );
        let doc = tamper(&doc, "SE*8*0042", "SE*10*0042");
        let parsed = parse_edi846(&doc).unwrap();
        assert_eq!(parsed.segment_count, 10);
        assert_eq!(
            parsed.lines,
            vec![("SKU-1".to_string(), 7), ("ABC:9.x_y".to_string(), 0)]
        );
    }

    #[test]
    fn edi846_validates_control_number() {
        for ctl in [0, 1_000_000_000, u32::MAX] {
            let env = Envelope {
                control_number: ctl,
                ..envelope()
            };
            let err = render_edi846(&two_lines(), &env).unwrap_err();
            assert!(
                matches!(err, FeedError::ControlNumberOutOfRange(c) if c == ctl),
                "{err}"
            );
        }
        let env = Envelope {
            control_number: 1,
            ..envelope()
        };
        let doc = render_edi846(&two_lines(), &env).unwrap();
        assert!(doc.contains("*000000001*0*T*>~\nGS*IB*STOCKWIRE*RETAILER 01*20261126*2103*1*X*004010~\nST*846*0001~\nBIA*00*DD*SW1*20261126~\n"));
    }

    #[test]
    fn edi846_validates_party_ids() {
        let bad = [
            "",
            "ABCDEFGHIJKLMNOP",
            "A*B",
            "A~B",
            "A>B",
            "SENDÉR",
            "A_B",
            " LEADING",
            "TRAILING ",
        ];
        for id in bad {
            let env = Envelope {
                sender_id: id.to_string(),
                ..envelope()
            };
            let err = render_edi846(&two_lines(), &env).unwrap_err();
            assert!(
                matches!(&err, FeedError::InvalidPartyId { role: "sender", id: i, .. } if i == id),
                "{id:?}: {err}"
            );
            let env = Envelope {
                receiver_id: id.to_string(),
                ..envelope()
            };
            let err = render_edi846(&two_lines(), &env).unwrap_err();
            assert!(
                matches!(&err, FeedError::InvalidPartyId { role: "receiver", id: i, .. } if i == id),
                "{id:?}: {err}"
            );
        }
        let err = render_edi846(
            &two_lines(),
            &Envelope {
                sender_id: "A*B".to_string(),
                ..envelope()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid sender id \"A*B\": contains the X12 delimiter '*'"
        );
    }

    #[test]
    fn edi846_validates_skus() {
        for sku in ["A*B", "A~B", "A>B", "", "a b", "é", &"x".repeat(49)] {
            let err = render_edi846(&[line(sku, 1, 1, AT)], &envelope()).unwrap_err();
            assert!(
                matches!(&err, FeedError::InvalidSku { sku: s, .. } if s == sku),
                "{sku:?}: {err}"
            );
        }
        let err = render_edi846(&[line("A~B", 1, 1, AT)], &envelope()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SKU \"A~B\": contains the X12 delimiter '~'"
        );
    }

    #[test]
    fn edi846_rejects_empty_feed() {
        let err = render_edi846(&[], &envelope()).unwrap_err();
        assert!(matches!(err, FeedError::EmptyFeed));
    }

    #[test]
    fn edi846_rejects_quantity_over_15_digits() {
        let err =
            render_edi846(&[line("A", 1_000_000_000_000_000, 1, AT)], &envelope()).unwrap_err();
        assert!(matches!(
            err,
            FeedError::QuantityTooLarge {
                available: 1_000_000_000_000_000,
                ..
            }
        ));
    }

    #[test]
    fn edi846_rejects_out_of_range_time() {
        let env = Envelope {
            at_ms: i64::MIN,
            ..envelope()
        };
        let err = render_edi846(&two_lines(), &env).unwrap_err();
        assert!(matches!(
            err,
            FeedError::TimestampOutOfRange { at_ms: i64::MIN }
        ));
    }

    // ---- 846 parser checks on tampered documents --------------------------------------

    #[test]
    fn parse_rejects_wrong_se_count() {
        let doc = tamper(EXPECTED_846, "SE*8*", "SE*9*");
        assert_eq!(edi_check(parse_edi846(&doc)), "SE01 segment count");
    }

    #[test]
    fn parse_rejects_removed_segment_via_se_count() {
        let doc = tamper(
            EXPECTED_846,
            "BIA*00*DD*SW42*20261126~\n",
            "BIA*00*DD*SW42*20261126~\nDTM*405*20261126~\n",
        );
        assert_eq!(edi_check(parse_edi846(&doc)), "SE01 segment count");
    }

    #[test]
    fn parse_rejects_wrong_se_control() {
        let doc = tamper(EXPECTED_846, "SE*8*0042", "SE*8*0043");
        assert_eq!(edi_check(parse_edi846(&doc)), "SE02 control");
    }

    #[test]
    fn parse_rejects_wrong_iea_control() {
        let doc = tamper(EXPECTED_846, "IEA*1*000000042", "IEA*1*000000043");
        assert_eq!(edi_check(parse_edi846(&doc)), "IEA02 control");
        // Same number, wrong width: IEA02 is fixed at 9 digits.
        let doc = tamper(EXPECTED_846, "IEA*1*000000042", "IEA*1*42");
        assert_eq!(edi_check(parse_edi846(&doc)), "IEA02 control");
    }

    #[test]
    fn parse_rejects_wrong_iea_group_count() {
        let doc = tamper(EXPECTED_846, "IEA*1*", "IEA*2*");
        assert_eq!(edi_check(parse_edi846(&doc)), "IEA01 group count");
    }

    #[test]
    fn parse_rejects_wrong_ge_control() {
        let doc = tamper(EXPECTED_846, "GE*1*42", "GE*1*43");
        assert_eq!(edi_check(parse_edi846(&doc)), "GE02 control");
    }

    #[test]
    fn parse_rejects_wrong_ge_set_count() {
        let doc = tamper(EXPECTED_846, "GE*1*42", "GE*2*42");
        assert_eq!(edi_check(parse_edi846(&doc)), "GE01 set count");
    }

    #[test]
    fn parse_rejects_wrong_ctt() {
        let doc = tamper(EXPECTED_846, "CTT*2~", "CTT*3~");
        assert_eq!(edi_check(parse_edi846(&doc)), "CTT01 line count");
    }

    #[test]
    fn parse_rejects_missing_ctt() {
        let doc = tamper(EXPECTED_846, "CTT*2~\nSE*8*", "SE*7*");
        assert_eq!(edi_check(parse_edi846(&doc)), "CTT");
    }

    #[test]
    fn parse_rejects_missing_qty() {
        // Drop the first QTY and fix SE01 so only the pairing check can fail.
        let doc = tamper(EXPECTED_846, "QTY*33*7*EA~\n", "");
        let doc = tamper(&doc, "SE*8*", "SE*7*");
        let err = parse_edi846(&doc).unwrap_err();
        assert_eq!(
            err.to_string(),
            "EDI 846 check `LIN/QTY pairing` failed: LIN for SKU \"SKU-1\" is not followed by a QTY*33"
        );
        // The last LIN, right before CTT.
        let doc = tamper(EXPECTED_846, "QTY*33*0*EA~\n", "");
        let doc = tamper(&doc, "SE*8*", "SE*7*");
        assert_eq!(edi_check(parse_edi846(&doc)), "LIN/QTY pairing");
    }

    #[test]
    fn parse_rejects_qty_with_other_qualifier_only() {
        let doc = tamper(EXPECTED_846, "QTY*33*7*EA", "QTY*17*7*EA");
        assert_eq!(edi_check(parse_edi846(&doc)), "LIN/QTY pairing");
    }

    #[test]
    fn parse_rejects_bad_qty_values() {
        for bad in ["QTY*33*-7*EA", "QTY*33*7.5*EA", "QTY*33**EA"] {
            let doc = tamper(EXPECTED_846, "QTY*33*7*EA", bad);
            assert_eq!(edi_check(parse_edi846(&doc)), "QTY", "{bad}");
        }
        let doc = tamper(EXPECTED_846, "QTY*33*7*EA", "QTY*33*7*CA");
        assert_eq!(edi_check(parse_edi846(&doc)), "QTY");
    }

    #[test]
    fn parse_rejects_qty_outside_lin() {
        let doc = tamper(
            EXPECTED_846,
            "SW42*20261126~\n",
            "SW42*20261126~\nQTY*33*1*EA~\n",
        );
        let doc = tamper(&doc, "SE*8*", "SE*9*");
        assert_eq!(edi_check(parse_edi846(&doc)), "LIN/QTY pairing");
    }

    #[test]
    fn parse_rejects_lin_without_sku() {
        let doc = tamper(EXPECTED_846, "LIN**SK*SKU-1", "LIN**UP*012345678905");
        assert_eq!(edi_check(parse_edi846(&doc)), "LIN");
    }

    #[test]
    fn parse_rejects_isa_length() {
        let doc = tamper(EXPECTED_846, "STOCKWIRE      *", "STOCKWIRE     *");
        let err = parse_edi846(&doc).unwrap_err();
        assert_eq!(
            err.to_string(),
            "EDI 846 check `ISA length` failed: ISA is 105 characters including `~`, expected 106"
        );
    }

    #[test]
    fn parse_rejects_isa_field_width() {
        // Total length kept at 106, but ISA06 is one short and ISA08 one long.
        let doc = tamper(
            EXPECTED_846,
            "STOCKWIRE      *ZZ*RETAILER 01    *",
            "STOCKWIRE     *ZZ*RETAILER 01     *",
        );
        assert_eq!(doc.lines().next().unwrap().len(), 106);
        let err = parse_edi846(&doc).unwrap_err();
        assert_eq!(
            err.to_string(),
            "EDI 846 check `ISA field width` failed: ISA06 is 14 characters, expected 15"
        );
    }

    #[test]
    fn parse_rejects_isa_element_count() {
        // Drop the ISA14/ISA15 separator and pad elsewhere: still 106 characters.
        let doc = tamper(EXPECTED_846, "*0*T*>~", "*0T*>X~");
        assert_eq!(doc.lines().next().unwrap().len(), 106);
        assert_eq!(edi_check(parse_edi846(&doc)), "ISA element count");
    }

    #[test]
    fn parse_rejects_isa_content() {
        let doc = tamper(EXPECTED_846, "*00401*", "*00501*");
        assert_eq!(edi_check(parse_edi846(&doc)), "ISA content");
        let doc = tamper(EXPECTED_846, "*0*T*>~", "*0*X*>~");
        assert_eq!(edi_check(parse_edi846(&doc)), "ISA content");
    }

    #[test]
    fn parse_rejects_wrong_transaction_type_and_version() {
        let doc = tamper(EXPECTED_846, "ST*846*", "ST*850*");
        assert_eq!(edi_check(parse_edi846(&doc)), "ST content");
        let doc = tamper(EXPECTED_846, "*X*004010~", "*X*005010~");
        assert_eq!(edi_check(parse_edi846(&doc)), "GS content");
    }

    #[test]
    fn parse_rejects_missing_bia() {
        let doc = tamper(EXPECTED_846, "BIA*00*DD*SW42*20261126~\n", "");
        let doc = tamper(&doc, "SE*8*", "SE*7*");
        assert_eq!(edi_check(parse_edi846(&doc)), "BIA");
    }

    #[test]
    fn parse_rejects_missing_trailers() {
        let doc = tamper(EXPECTED_846, "SE*8*0042~\n", "");
        assert_eq!(edi_check(parse_edi846(&doc)), "SE");
        let doc = tamper(EXPECTED_846, "GE*1*42~\n", "");
        assert_eq!(edi_check(parse_edi846(&doc)), "GE");
        let doc = tamper(EXPECTED_846, "IEA*1*000000042~\n", "");
        assert_eq!(edi_check(parse_edi846(&doc)), "IEA");
    }

    #[test]
    fn parse_rejects_two_groups() {
        let group: String = EXPECTED_846
            .lines()
            .skip(1)
            .take(10)
            .map(|l| format!("{l}\n"))
            .collect();
        let doc = tamper(EXPECTED_846, "IEA*1*", &format!("{group}IEA*2*"));
        assert_eq!(edi_check(parse_edi846(&doc)), "single group");
    }

    #[test]
    fn parse_rejects_two_transaction_sets() {
        let set: String = EXPECTED_846
            .lines()
            .skip(2)
            .take(8)
            .map(|l| format!("{l}\n"))
            .collect();
        let doc = tamper(EXPECTED_846, "GE*1*", &format!("{set}GE*2*"));
        assert_eq!(edi_check(parse_edi846(&doc)), "single transaction set");
    }

    #[test]
    fn parse_rejects_syntax_problems() {
        assert_eq!(edi_check(parse_edi846("")), "ISA");
        assert_eq!(edi_check(parse_edi846("GS*IB~")), "ISA");
        let doc = EXPECTED_846.trim_end().trim_end_matches('~');
        assert_eq!(edi_check(parse_edi846(doc)), "segment syntax");
        let doc = tamper(EXPECTED_846, "CTT*2~\n", "CTT*2~~\n");
        assert_eq!(edi_check(parse_edi846(&doc)), "segment syntax");
        let doc = tamper(EXPECTED_846, "LIN**SK*SKU-1", "LIN**SK*SKÜ-1");
        assert_eq!(edi_check(parse_edi846(&doc)), "character set");
    }

    #[test]
    fn parse_never_panics_on_damaged_input() {
        let doc = rendered();
        // Every strict prefix that still lacks the final `~` is incomplete.
        for n in 0..doc.len() - 1 {
            assert!(parse_edi846(&doc[..n]).is_err(), "prefix of {n} bytes");
        }
        let segments: Vec<&str> = doc.split_inclusive('\n').collect();
        for skip in 0..segments.len() {
            let damaged: String = segments
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, s)| *s)
                .collect();
            assert!(parse_edi846(&damaged).is_err(), "without segment {skip}");
        }
        for bare in ["LIN~", "QTY~", "CTT~", "SE~", "ST~", "BIA~"] {
            let doc = tamper(EXPECTED_846, "LIN**SK*SKU-1~", bare);
            assert!(parse_edi846(&doc).is_err(), "{bare}");
        }
    }

    #[test]
    fn parse_rejects_trailing_segments() {
        let doc = format!("{EXPECTED_846}GS*IB~\n");
        assert_eq!(edi_check(parse_edi846(&doc)), "trailing data");
    }
}
