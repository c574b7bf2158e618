//! Reading one inbox file as the partner's CSV: the header and the layout it
//! resolves to, then each record after the ones already done, bounded (a
//! record over `LINE_BYTES_MAX` bytes or `RECORD_FIELDS_MAX` fields means
//! the file is not this partner's CSV), and turned into a [`Row`]: its cells
//! as read, its event or why it has none, and its payload.
//!
//! What it must not do: apply, reject or record anything (the job and
//! [`super::progress`] do), or read more than one record ahead of its caller.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::files;
use super::layout::{row_event, Layout, RowContext, RowError};
use super::worker::Halt;
use crate::codes::Code;
use crate::config::{Config, InboxConfig};
use crate::engine::WarehouseEvent;

/// Most fields in one inbox record.
const RECORD_FIELDS_MAX: usize = 256;

/// One row read from the file.
pub(super) struct Row {
    pub(super) line: u64,
    /// As read, for the rejected-rows file.
    pub(super) cells: Vec<Vec<u8>>,
    pub(super) parsed: Result<WarehouseEvent, RowError>,
    pub(super) payload: String,
}

/// What a row is read for: the partner's settings and the file it is in.
pub(super) struct Source<'a> {
    pub(super) config: &'a Config,
    pub(super) inbox: &'a InboxConfig,
    /// The file's name.
    pub(super) file: &'a str,
    /// `inbox-<20 hex>`: the event id prefix.
    pub(super) file_id: &'a str,
}

/// A file opened as the partner's CSV.
// The large variant is the usual one, taken apart at once: boxing it would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Opened {
    /// A file with a header expected but not even a header row: nothing to
    /// do (partners send these for "no news").
    Empty,
    /// Not this partner's CSV at all: the code and reason to reject it whole.
    Refused(&'static str, String),
    Rows {
        rows: RowReader,
        /// The header row as read (for the rejected-rows file).
        header: Option<Vec<Vec<u8>>>,
    },
}

/// What reading on found.
// As for `Opened`: a row is the usual answer, moved straight into the chunk,
// and boxing it would allocate once per row.
#[allow(clippy::large_enum_variant)]
pub(super) enum Next {
    Row(Row),
    /// The end of the file.
    End,
    /// A record that shows the file is not this partner's CSV: the code and
    /// reason to reject it whole.
    Refused(&'static str, String),
}

/// The records of one file, after its header.
pub(super) struct RowReader {
    reader: csv::Reader<files::LineLimit<BufReader<File>>>,
    record: csv::ByteRecord,
    layout: Layout,
    /// The file has a header row (the layout's columns may be named in it).
    headed: bool,
    /// No record has been looked at yet.
    first: bool,
}

impl RowReader {
    /// Opens `path` with the inbox's delimiter, reads its header row (when
    /// the inbox has one) and resolves the layout.
    pub(super) fn open(path: &Path, inbox: &InboxConfig) -> Result<Opened, Halt> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(inbox.delimiter_byte())
            .has_headers(false)
            .flexible(true)
            .from_reader(files::LineLimit::new(BufReader::new(files::open_regular(
                path,
            )?)));
        let mut record = csv::ByteRecord::new();
        let mut header_bytes = None;
        let header = if inbox.has_header {
            if !reader.read_byte_record(&mut record)? {
                // An empty file: nothing to do (partners send these for "no news").
                return Ok(Opened::Empty);
            }
            let cells: Result<Vec<String>, _> = record
                .iter()
                .map(|cell| std::str::from_utf8(cell).map(str::to_string))
                .collect();
            match cells {
                Ok(cells) => {
                    header_bytes = Some(record.iter().map(<[u8]>::to_vec).collect());
                    Some(cells)
                }
                Err(_) => {
                    return Ok(Opened::Refused(
                        Code::NotCsv.as_str(),
                        "the header row is not UTF-8 text".to_string(),
                    ))
                }
            }
        } else {
            None
        };
        let layout = match Layout::resolve(inbox, header.as_deref()) {
            Ok(layout) => layout,
            Err(reason) => return Ok(Opened::Refused(Code::MissingColumn.as_str(), reason)),
        };
        Ok(Opened::Rows {
            rows: RowReader {
                reader,
                record,
                layout,
                headed: header.is_some(),
                first: true,
            },
            header: header_bytes,
        })
    }

    /// The next row after line `lines_done` that is not blank.
    pub(super) fn next(&mut self, source: &Source<'_>, lines_done: u64) -> Result<Next, Halt> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(true) => {}
                Ok(false) => return Ok(Next::End),
                Err(error) if files::is_line_too_long(&error) => {
                    return Ok(Next::Refused(
                        Code::RowTooLarge.as_str(),
                        format!(
                            "a line is longer than {} bytes: not this partner's CSV",
                            files::LINE_BYTES_MAX
                        ),
                    ));
                }
                Err(error) => return Err(error.into()),
            }
            let record = &self.record;
            // Quoted line breaks can join many short lines into one record:
            // bound the record itself before it is copied into a row.
            if record.as_slice().len() > files::LINE_BYTES_MAX || record.len() > RECORD_FIELDS_MAX {
                return Ok(Next::Refused(
                    Code::RowTooLarge.as_str(),
                    format!(
                        "a record is over {} bytes or {RECORD_FIELDS_MAX} fields: not this partner's CSV",
                        files::LINE_BYTES_MAX
                    ),
                ));
            }
            if self.first && !self.headed && record.len() < self.layout.width() {
                return Ok(Next::Refused(
                    Code::MissingColumn.as_str(),
                    format!(
                        "the first row has {} fields, the layout needs at least {}: not this partner's CSV",
                        record.len(),
                        self.layout.width()
                    ),
                ));
            }
            self.first = false;
            // The record's number (the header is 1), not `line()`: csv counts
            // only `\n` there, and a file with bare `\r` line ends would give
            // every row the same number (and event id).
            let line = record.position().map_or(0, |p| p.record() + 1);
            if line <= lines_done {
                continue;
            }
            if record
                .iter()
                .all(|cell| cell.iter().all(u8::is_ascii_whitespace))
            {
                continue; // a blank row
            }
            return Ok(Next::Row(parse_row(&self.layout, source, line, record)));
        }
    }
}

fn parse_row(layout: &Layout, source: &Source<'_>, line: u64, record: &csv::ByteRecord) -> Row {
    let cells: Vec<Vec<u8>> = record.iter().map(<[u8]>::to_vec).collect();
    let text: Result<Vec<&str>, _> = record.iter().map(std::str::from_utf8).collect();
    let event_id = format!("{}-{line}", source.file_id);
    let (parsed, payload) = match text {
        Ok(text) => {
            let context = RowContext {
                config: source.config,
                inbox: source.inbox,
                layout,
                file: source.file,
            };
            let parsed = row_event(&context, event_id, line, &text);
            (parsed, layout.payload(source.file, line, &text))
        }
        Err(_) => {
            let lossy_cells: Vec<String> = cells.iter().map(|c| lossy(c)).collect();
            let shown: Vec<&str> = lossy_cells.iter().map(String::as_str).collect();
            let error = RowError {
                code: Code::BadRequest.as_str(),
                detail: "the row is not UTF-8 text".to_string(),
                type_label: "unknown",
                sku: None,
                location: None,
            };
            (Err(error), layout.payload(source.file, line, &shown))
        }
    };
    Row {
        line,
        cells,
        parsed,
        payload,
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
