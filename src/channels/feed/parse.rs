//! Reading feeds back: the CSV and X12 846 parsers. Only tests read what the
//! sinks wrote (to check every byte against the renderers and the X12 rules),
//! so this is compiled for tests and with the `test-support` feature, never
//! into the server.

use super::*;

/// The ISA segment is fixed width: 106 characters, these element widths.
const ISA_LEN: usize = 106;
const ISA_WIDTHS: [usize; 16] = [2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1];

/// Non-empty ASCII digits only (no sign, no spaces), fitting in a `u64`.
fn digits_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An 846 interchange read back by [`parse_edi846`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed846 {
    /// ISA13 / IEA02.
    pub interchange_control: u32,
    /// GS06 / GE02.
    pub group_control: u32,
    /// ST02 / SE02, as written (e.g. `"0042"`).
    pub transaction_control: String,
    /// ISA06 without its padding.
    pub sender_id: String,
    /// ISA08 without its padding.
    pub receiver_id: String,
    /// `(sku, quantity available)` for each LIN loop, in document order.
    pub lines: Vec<(String, u64)>,
    /// Segments from ST to SE inclusive, as counted (and checked against SE01).
    pub segment_count: usize,
}

/// Parses CSV written by [`render_csv`]. Checks the header, that every record has four
/// fields, a valid SKU, whole-number `available` and `seq`, and an RFC 3339 `at` with at
/// most millisecond precision.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<FeedLine>, FeedError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader.headers()?;
    if !header.iter().eq(CSV_HEADER) {
        return Err(FeedError::CsvHeader {
            found: header.iter().collect::<Vec<_>>().join(","),
        });
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |reason: String| FeedError::CsvRecord { line, reason };
        // The reader already rejects records whose length differs from the header's.
        let field = |i: usize| record.get(i).unwrap_or("");
        let (sku, available, seq, at) = (field(0), field(1), field(2), field(3));
        check_sku(sku).map_err(|e| bad(e.to_string()))?;
        let available = digits_u64(available)
            .ok_or_else(|| bad(format!("available {available:?} is not a whole number")))?;
        let seq =
            digits_u64(seq).ok_or_else(|| bad(format!("seq {seq:?} is not a whole number")))?;
        let time = DateTime::parse_from_rfc3339(at)
            .map_err(|e| bad(format!("at {at:?} is not an RFC 3339 timestamp: {e}")))?;
        if time.nanosecond() % 1_000_000 != 0 {
            return Err(bad(format!("at {at:?} is finer than a millisecond")));
        }
        out.push(FeedLine {
            sku: sku.to_string(),
            available,
            seq,
            at_ms: time.timestamp_millis(),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// X12 846: parsing
// ---------------------------------------------------------------------------------------

fn edi(check: &'static str, detail: impl Into<String>) -> FeedError {
    FeedError::Edi {
        check,
        detail: detail.into(),
    }
}

/// One segment split into elements; `els[0]` is the segment id.
struct Segment<'a> {
    els: Vec<&'a str>,
}

impl<'a> Segment<'a> {
    fn id(&self) -> &'a str {
        self.els[0]
    }

    /// Element `n` (1-based, as in `SE01`), or `""` when absent.
    fn el(&self, n: usize) -> &'a str {
        self.els.get(n).copied().unwrap_or("")
    }
}

/// Splits on `~`, allowing one `\n` or `\r\n` after each terminator and trailing
/// whitespace at the end of the document.
fn split_segments(text: &str) -> Result<Vec<&str>, FeedError> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.trim().is_empty() {
        let Some(end) = rest.find('~') else {
            return Err(edi(
                "segment syntax",
                format!(
                    "data after segment {} has no `~` terminator: {:?}",
                    out.len(),
                    rest.chars().take(20).collect::<String>()
                ),
            ));
        };
        let segment = &rest[..end];
        if segment.is_empty() {
            return Err(edi(
                "segment syntax",
                format!("empty segment after segment {}", out.len()),
            ));
        }
        if segment.contains(['\r', '\n']) {
            return Err(edi(
                "segment syntax",
                format!("line break inside segment {}: {segment:?}", out.len() + 1),
            ));
        }
        out.push(segment);
        rest = &rest[end + 1..];
        rest = rest
            .strip_prefix("\r\n")
            .or_else(|| rest.strip_prefix('\n'))
            .unwrap_or(rest);
    }
    Ok(out)
}

struct Isa<'a> {
    sender: &'a str,
    receiver: &'a str,
    control: u32,
}

fn parse_isa(raw: &str) -> Result<Isa<'_>, FeedError> {
    if !raw.starts_with("ISA") {
        return Err(edi("ISA", "the interchange must start with an ISA segment"));
    }
    if raw.len() + 1 != ISA_LEN {
        return Err(edi(
            "ISA length",
            format!(
                "ISA is {} characters including `~`, expected {ISA_LEN}",
                raw.len() + 1
            ),
        ));
    }
    let els: Vec<&str> = raw.split('*').collect();
    if els.len() != ISA_WIDTHS.len() + 1 {
        return Err(edi(
            "ISA element count",
            format!("ISA has {} elements, expected 16", els.len() - 1),
        ));
    }
    for (n, (el, width)) in els[1..].iter().zip(ISA_WIDTHS).enumerate() {
        if el.len() != width {
            return Err(edi(
                "ISA field width",
                format!(
                    "ISA{:02} is {} characters, expected {width}",
                    n + 1,
                    el.len()
                ),
            ));
        }
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let content = |ok: bool, what: String| {
        if ok {
            Ok(())
        } else {
            Err(edi("ISA content", what))
        }
    };
    content(
        all_digits(els[9]),
        format!("ISA09 date {:?} is not YYMMDD", els[9]),
    )?;
    content(
        all_digits(els[10]),
        format!("ISA10 time {:?} is not HHMM", els[10]),
    )?;
    content(
        els[11] == "U",
        format!("ISA11 is {:?}, expected \"U\"", els[11]),
    )?;
    content(
        els[12] == "00401",
        format!("ISA12 version is {:?}, expected \"00401\"", els[12]),
    )?;
    content(
        matches!(els[15], "T" | "P"),
        format!("ISA15 usage is {:?}, expected \"T\" or \"P\"", els[15]),
    )?;
    content(
        els[16] == ">",
        format!("ISA16 component separator is {:?}, expected \">\"", els[16]),
    )?;
    let control = digits_u64(els[13])
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            edi(
                "ISA content",
                format!("ISA13 {:?} is not a number", els[13]),
            )
        })?;
    Ok(Isa {
        sender: els[6].trim_end(),
        receiver: els[8].trim_end(),
        control,
    })
}

/// Parses an N0 control number of 1–9 digits.
fn control(check: &'static str, what: &str, s: &str) -> Result<u32, FeedError> {
    if s.len() > 9 {
        return Err(edi(check, format!("{what} {s:?} has more than 9 digits")));
    }
    digits_u64(s)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| edi(check, format!("{what} {s:?} is not a number")))
}

fn count(check: &'static str, what: &str, s: &str) -> Result<u64, FeedError> {
    digits_u64(s).ok_or_else(|| edi(check, format!("{what} {s:?} is not a number")))
}

/// The transaction set found inside a group.
struct TransactionSet {
    control: String,
    lines: Vec<(String, u64)>,
    segment_count: usize,
}

/// Parses the ST..SE starting at `segs[start]`; returns the set and the index after SE.
fn parse_transaction_set(
    segs: &[Segment<'_>],
    start: usize,
) -> Result<(TransactionSet, usize), FeedError> {
    let st = &segs[start];
    if st.el(1) != "846" {
        return Err(edi(
            "ST content",
            format!("ST01 is {:?}, expected \"846\"", st.el(1)),
        ));
    }
    let st02 = st.el(2);
    if !(4..=9).contains(&st02.len()) || !st02.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(edi(
            "ST content",
            format!("ST02 {st02:?} is not a 4-9 character control number"),
        ));
    }
    let se_index = segs[start + 1..]
        .iter()
        .position(|s| matches!(s.id(), "SE" | "ST" | "GE" | "GS" | "IEA"))
        .map(|i| start + 1 + i)
        .filter(|&i| segs[i].id() == "SE")
        .ok_or_else(|| edi("SE", format!("transaction set {st02} has no SE trailer")))?;
    let body = &segs[start + 1..se_index];

    let bia = body.first().filter(|s| s.id() == "BIA").ok_or_else(|| {
        edi(
            "BIA",
            format!("transaction set {st02} does not start with BIA"),
        )
    })?;
    if (1..=4).any(|n| bia.el(n).is_empty()) {
        return Err(edi("BIA", "BIA01 to BIA04 are mandatory"));
    }
    if bia.el(4).len() != 8 || digits_u64(bia.el(4)).is_none() {
        return Err(edi(
            "BIA",
            format!("BIA04 date {:?} is not CCYYMMDD", bia.el(4)),
        ));
    }

    // Walk the LIN loops: every LIN needs exactly one QTY*33 before the next LIN or CTT.
    let mut lines = Vec::new();
    let mut open: Option<(String, Option<u64>)> = None;
    let mut ctt: Option<u64> = None;
    let mut lin_count: u64 = 0;
    let close = |open: &mut Option<(String, Option<u64>)>,
                 lines: &mut Vec<(String, u64)>|
     -> Result<(), FeedError> {
        match open.take() {
            Some((sku, Some(qty))) => {
                lines.push((sku, qty));
                Ok(())
            }
            Some((sku, None)) => Err(edi(
                "LIN/QTY pairing",
                format!("LIN for SKU {sku:?} is not followed by a QTY*33"),
            )),
            None => Ok(()),
        }
    };
    for seg in &body[1..] {
        match seg.id() {
            "LIN" => {
                if ctt.is_some() {
                    return Err(edi("CTT", "LIN after CTT"));
                }
                close(&mut open, &mut lines)?;
                let sku = seg
                    .els
                    .get(2..)
                    .unwrap_or_default()
                    .chunks(2)
                    .find(|pair| pair[0] == "SK")
                    .and_then(|pair| pair.get(1).copied())
                    .ok_or_else(|| edi("LIN", format!("LIN {:?} has no SK product id", seg.els)))?;
                check_sku(sku).map_err(|e| edi("LIN", e.to_string()))?;
                open = Some((sku.to_string(), None));
                lin_count += 1;
            }
            "QTY" => {
                let Some((sku, qty)) = open.as_mut() else {
                    return Err(edi("LIN/QTY pairing", "QTY outside a LIN loop"));
                };
                if seg.el(1) != "33" {
                    continue;
                }
                if qty.is_some() {
                    return Err(edi(
                        "LIN/QTY pairing",
                        format!("second QTY*33 for SKU {sku:?}"),
                    ));
                }
                let unit = seg.el(3).split('>').next().unwrap_or("");
                if unit != "EA" {
                    return Err(edi(
                        "QTY",
                        format!("QTY*33 for SKU {sku:?} has unit {unit:?}, expected \"EA\""),
                    ));
                }
                *qty = Some(digits_u64(seg.el(2)).ok_or_else(|| {
                    edi(
                        "QTY",
                        format!(
                            "QTY02 {:?} for SKU {sku:?} is not a whole number",
                            seg.el(2)
                        ),
                    )
                })?);
            }
            "CTT" => {
                if ctt.is_some() {
                    return Err(edi("CTT", "more than one CTT"));
                }
                close(&mut open, &mut lines)?;
                ctt = Some(count("CTT", "CTT01", seg.el(1))?);
            }
            _ => {}
        }
    }
    close(&mut open, &mut lines)?;
    if lin_count == 0 {
        return Err(edi("LIN", format!("transaction set {st02} has no LIN")));
    }
    let ctt = ctt.ok_or_else(|| edi("CTT", format!("transaction set {st02} has no CTT")))?;
    if ctt != lin_count {
        return Err(edi(
            "CTT01 line count",
            format!("CTT01 is {ctt} but there are {lin_count} LIN segments"),
        ));
    }

    let se = &segs[se_index];
    let segment_count = se_index - start + 1;
    let se01 = count("SE01 segment count", "SE01", se.el(1))?;
    if se01 != segment_count as u64 {
        return Err(edi(
            "SE01 segment count",
            format!("SE01 is {se01} but ST..SE holds {segment_count} segments"),
        ));
    }
    if se.el(2) != st02 {
        return Err(edi(
            "SE02 control",
            format!("SE02 {:?} does not match ST02 {st02:?}", se.el(2)),
        ));
    }
    Ok((
        TransactionSet {
            control: st02.to_string(),
            lines,
            segment_count,
        },
        se_index + 1,
    ))
}

/// Parses an 846 interchange written by [`render_edi846`] and verifies its envelope:
/// ISA length (106) and field widths, IEA02 = ISA13, IEA01 = number of groups, GE02 =
/// GS06, GE01 = number of transaction sets, SE01 = segments from ST to SE, SE02 = ST02,
/// CTT01 = number of LIN, and one QTY*33 (unit EA) in every LIN loop. Exactly one group
/// holding one 846 transaction set is accepted. Segments may end in `~`, `~\n` or `~\r\n`.
/// Segments other than LIN, QTY and CTT inside the set (e.g. DTM) are counted but
/// otherwise ignored. A failure is a [`FeedError::Edi`] naming the check.
pub fn parse_edi846(text: &str) -> Result<Parsed846, FeedError> {
    if let Some(c) = text.chars().find(|c| !c.is_ascii()) {
        return Err(edi("character set", format!("non-ASCII character {c:?}")));
    }
    let raw = split_segments(text)?;
    let Some((isa_raw, rest)) = raw.split_first() else {
        return Err(edi("ISA", "the document is empty"));
    };
    let isa = parse_isa(isa_raw)?;
    let segs: Vec<Segment<'_>> = rest
        .iter()
        .map(|s| Segment {
            els: s.split('*').collect(),
        })
        .collect();
    for seg in &segs {
        let id = seg.id();
        if !(2..=3).contains(&id.len())
            || !id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(edi("segment syntax", format!("bad segment id {id:?}")));
        }
    }

    let mut groups: Vec<(u32, Vec<TransactionSet>)> = Vec::new();
    let mut i = 0;
    loop {
        let Some(seg) = segs.get(i) else {
            return Err(edi("IEA", "the interchange has no IEA trailer"));
        };
        match seg.id() {
            "IEA" => break,
            "GS" => {}
            other => {
                return Err(edi(
                    "envelope structure",
                    format!("expected GS or IEA, found {other}"),
                ))
            }
        }
        if seg.el(1) != "IB" {
            return Err(edi(
                "GS content",
                format!("GS01 is {:?}, expected \"IB\"", seg.el(1)),
            ));
        }
        if seg.el(8) != "004010" {
            return Err(edi(
                "GS content",
                format!("GS08 version is {:?}, expected \"004010\"", seg.el(8)),
            ));
        }
        let gs06 = control("GS content", "GS06", seg.el(6))?;
        i += 1;
        let mut sets = Vec::new();
        loop {
            let Some(seg) = segs.get(i) else {
                return Err(edi("GE", format!("group {gs06} has no GE trailer")));
            };
            match seg.id() {
                "GE" => break,
                "ST" => {
                    let (set, next) = parse_transaction_set(&segs, i)?;
                    sets.push(set);
                    i = next;
                }
                "GS" | "IEA" => {
                    return Err(edi("GE", format!("group {gs06} has no GE trailer")));
                }
                other => {
                    return Err(edi(
                        "envelope structure",
                        format!("expected ST or GE in group {gs06}, found {other}"),
                    ))
                }
            }
        }
        let ge = &segs[i];
        let ge01 = count("GE01 set count", "GE01", ge.el(1))?;
        if ge01 != sets.len() as u64 {
            return Err(edi(
                "GE01 set count",
                format!(
                    "GE01 is {ge01} but group {gs06} holds {} transaction sets",
                    sets.len()
                ),
            ));
        }
        let ge02 = control("GE02 control", "GE02", ge.el(2))?;
        if ge02 != gs06 {
            return Err(edi(
                "GE02 control",
                format!("GE02 {ge02} does not match GS06 {gs06}"),
            ));
        }
        groups.push((gs06, sets));
        i += 1;
    }

    let iea = &segs[i];
    if i + 1 != segs.len() {
        return Err(edi(
            "trailing data",
            format!("{} segments after IEA", segs.len() - i - 1),
        ));
    }
    let iea01 = count("IEA01 group count", "IEA01", iea.el(1))?;
    if iea01 != groups.len() as u64 {
        return Err(edi(
            "IEA01 group count",
            format!(
                "IEA01 is {iea01} but the interchange holds {} groups",
                groups.len()
            ),
        ));
    }
    let iea02 = iea.el(2);
    let iea_control = (iea02.len() == 9)
        .then(|| digits_u64(iea02))
        .flatten()
        .and_then(|n| u32::try_from(n).ok());
    if iea_control != Some(isa.control) {
        return Err(edi(
            "IEA02 control",
            format!("IEA02 {iea02:?} does not match ISA13 {:09}", isa.control),
        ));
    }

    if groups.len() != 1 {
        return Err(edi(
            "single group",
            format!(
                "expected exactly one functional group, found {}",
                groups.len()
            ),
        ));
    }
    let (group_control, mut sets) = groups.remove(0);
    if sets.len() != 1 {
        return Err(edi(
            "single transaction set",
            format!("expected exactly one transaction set, found {}", sets.len()),
        ));
    }
    let set = sets.remove(0);
    Ok(Parsed846 {
        interchange_control: isa.control,
        group_control,
        transaction_control: set.control,
        sender_id: isa.sender.to_string(),
        receiver_id: isa.receiver.to_string(),
        lines: set.lines,
        segment_count: set.segment_count,
    })
}
