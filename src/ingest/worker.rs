//! One inbox's worker: waits for the watcher or the poll interval, claims
//! complete files into `processing/` one at a time, reads each in chunks of
//! rows, applies the chunk's events, records its rejections and the file's
//! progress durably, and files the result.
//!
//! Order of writes for one chunk (what makes a restart safe):
//! 1. rejected rows of the chunk: their exceptions and the progress record
//!    listing them (`rejected_ahead`), in one atomic write, before any later
//!    row of their position is tried;
//! 2. the chunk's events (event ids are derived from the file, so a row
//!    applied before a crash answers `duplicate` when tried again);
//! 3. the chunk's rejected rows appended to the rejected-rows file, fsynced;
//! 4. the progress record: `lines_done` past the chunk, the counts, and the
//!    length of the rejected-rows file.
//!
//! A file is filed (moved to `processed/`) only after its last chunk's record
//! is durable and its result file is written.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, RecvTimeoutError, TryRecvError};
use serde_json::{json, Value};

use super::files::{self, Dirs, Settling, RESULT_SUFFIX};
use super::layout::{row_event, Layout, RowContext, RowError};
use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::clock::system_now_ms as now_ms;
use crate::codes::Code;
use crate::config::InboxConfig;
use crate::engine::{Engine, EngineError, EventStatus, Rejection, WarehouseEvent};
use crate::input::rfc3339;
use crate::storage::records::{ExceptionKind, ExceptionRecord, InboxFileRecord, InboxFinish};

/// Most fields in one inbox record.
const RECORD_FIELDS_MAX: usize = 256;

/// Why a file was not finished.
#[derive(Debug)]
pub(super) enum Halt {
    /// Shutting down: the file stays in `processing/` and resumes at next start.
    Stopping,
    /// An I/O or storage failure: the file stays in `processing/` and is tried
    /// again after a back-off.
    Failed(String),
}

impl From<io::Error> for Halt {
    fn from(error: io::Error) -> Self {
        Halt::Failed(error.to_string())
    }
}

impl From<csv::Error> for Halt {
    fn from(error: csv::Error) -> Self {
        Halt::Failed(format!("reading csv: {error}"))
    }
}

pub(super) struct Worker {
    engine: Arc<Engine>,
    inbox: InboxConfig,
    dirs: Dirs,
    /// Drives the engine's async calls from this thread.
    runtime: tokio::runtime::Runtime,
    /// The watcher's wake-ups (bounded 1: a wake-up, not a queue).
    wake: Receiver<()>,
    /// Disconnected when the server stops.
    stop: Receiver<()>,
    settling: Settling,
    /// Rows per chunk: `batch_events_max`, the same bound as one HTTP batch.
    chunk_rows: usize,
}

/// One row read from the file.
struct Row {
    line: u64,
    /// As read, for the rejected-rows file.
    cells: Vec<Vec<u8>>,
    parsed: Result<WarehouseEvent, RowError>,
    payload: String,
}

/// The file being processed.
struct FileState {
    name: String,
    key: [u8; 32],
    /// `inbox-<20 hex>`: the event id prefix and every event's correlation id.
    file_id: String,
    correlation: Arc<str>,
    digest_hex: String,
    bytes: u64,
    record: InboxFileRecord,
}

/// The rejected rows of the file being processed, in `processing/.<file id>.rejects`
/// until the file is filed.
struct RejectsFile {
    path: PathBuf,
    file: Option<File>,
    len: u64,
    delimiter: u8,
    header: Option<Vec<Vec<u8>>>,
}

/// Columns appended to each rejected row (after the partner's own, so a fixed
/// file can be dropped again as it is: columns are found by name or position).
const REJECT_COLUMNS: [&str; 3] = ["rejected_line", "rejected_code", "rejected_reason"];

impl RejectsFile {
    /// Opens the rejected-rows file, keeping its first `keep` bytes (what the
    /// progress record covers) and dropping anything a crash left after them.
    fn open(
        path: PathBuf,
        keep: u64,
        delimiter: u8,
        header: Option<Vec<Vec<u8>>>,
    ) -> io::Result<RejectsFile> {
        let mut rejects = RejectsFile {
            path,
            file: None,
            len: 0,
            delimiter,
            header,
        };
        if keep == 0 {
            match fs::remove_file(&rejects.path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            return Ok(rejects);
        }
        match OpenOptions::new().write(true).open(&rejects.path) {
            Ok(mut file) => {
                file.set_len(keep)?;
                file.seek(SeekFrom::End(0))?;
                rejects.file = Some(file);
                rejects.len = keep;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %rejects.path.display(), "rejected rows file missing; earlier rejected rows are only in the exception queue");
            }
            Err(error) => return Err(error),
        }
        Ok(rejects)
    }

    fn encode(&self, records: &[Vec<Vec<u8>>]) -> io::Result<Vec<u8>> {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(self.delimiter)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        for record in records {
            writer.write_record(record)?;
        }
        writer
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Appends rows (cells, then line, code and reason) and fsyncs.
    fn append(&mut self, rows: &[(&Row, &str, &str)]) -> io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(rows.len() + 1);
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.file = Some(file);
            self.len = 0;
            if let Some(header) = &self.header {
                let mut names = header.clone();
                names.extend(REJECT_COLUMNS.iter().map(|c| c.as_bytes().to_vec()));
                records.push(names);
            }
        }
        for (row, code, detail) in rows {
            let mut cells = row.cells.clone();
            cells.push(row.line.to_string().into_bytes());
            cells.push(code.as_bytes().to_vec());
            cells.push(detail.as_bytes().to_vec());
            records.push(cells);
        }
        let bytes = self.encode(&records)?;
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("rejected rows file not open"));
        };
        file.write_all(&bytes)?;
        file.sync_data()?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// The rejected-rows file of `name`: the same name, `.csv` added when it has
/// another extension.
fn rejects_name(name: &str) -> String {
    if name.to_ascii_lowercase().ends_with(".csv") {
        name.to_string()
    } else {
        format!("{name}.csv")
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Worker {
    pub(super) fn new(
        engine: Arc<Engine>,
        inbox: InboxConfig,
        dirs: Dirs,
        runtime: tokio::runtime::Runtime,
        wake: Receiver<()>,
        stop: Receiver<()>,
    ) -> Worker {
        let chunk_rows = engine.config.batch_events_max.max(1);
        Worker {
            engine,
            inbox,
            dirs,
            runtime,
            wake,
            stop,
            settling: Settling::default(),
            chunk_rows,
        }
    }

    /// Runs until stopped; a panic (a bug) is logged and the loop starts over
    /// after a pause, from what is on disk.
    pub(super) fn run_supervised(mut self) {
        loop {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
            match run {
                Ok(()) => return,
                Err(_) => {
                    tracing::error!(dir = %self.inbox.dir.display(), "inbox worker panicked; starting over");
                    if self.pause(BACKOFF_MAX) {
                        return;
                    }
                }
            }
        }
    }

    /// True when the server is stopping.
    fn stopping(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps `duration` or until stopped; true when stopping.
    fn pause(&self, duration: Duration) -> bool {
        !matches!(
            self.stop.recv_timeout(duration),
            Err(RecvTimeoutError::Timeout)
        )
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.inbox.poll_interval_ms)
    }

    fn source(&self) -> &str {
        &self.inbox.source
    }

    fn count_file(&self, outcome: &str) {
        self.engine
            .metrics
            .inbox_files_total
            .with_label_values(&[self.source(), outcome])
            .inc();
    }

    fn run(&mut self) {
        let mut failures = 0u32;
        loop {
            match self.round() {
                Ok(settling) => {
                    failures = 0;
                    let wait = if settling {
                        let stable = Duration::from_millis(self.inbox.stable_ms);
                        self.poll_interval()
                            .min(stable.max(Duration::from_millis(10)))
                    } else {
                        self.poll_interval()
                    };
                    select! {
                        recv(self.wake) -> _ => {}
                        recv(self.stop) -> _ => return,
                        default(wait) => {}
                    }
                }
                Err(Halt::Stopping) => return,
                Err(Halt::Failed(error)) => {
                    failures = failures.saturating_add(1);
                    let wait = (BACKOFF_MIN * 2u32.saturating_pow(failures.min(16)))
                        .clamp(self.poll_interval(), BACKOFF_MAX.max(self.poll_interval()));
                    tracing::error!(%error, dir = %self.inbox.dir.display(), retry_in_ms = wait.as_millis() as u64, "inbox file failed; will retry");
                    if self.pause(wait) {
                        return;
                    }
                }
            }
        }
    }

    /// Finishes what `processing/` holds, then claims and processes every
    /// complete file. Returns whether files are still settling.
    fn round(&mut self) -> Result<bool, Halt> {
        for name in files::in_processing(&self.dirs)? {
            self.process(&name)?;
        }
        let scan = self.settling.scan(
            &self.dirs.incoming,
            Duration::from_millis(self.inbox.stable_ms),
        )?;
        self.engine
            .metrics
            .inbox_files_waiting
            .with_label_values(&[self.source()])
            .set((scan.ready.len() + scan.settling) as i64);
        for ready in &scan.ready {
            if self.stopping() {
                return Err(Halt::Stopping);
            }
            self.settling.forget(&ready.name);
            match files::claim(&self.dirs, &ready.name) {
                Ok(true) => self.process(&ready.name)?,
                Ok(false) => {} // a file of that name is still being processed
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(scan.settling > 0)
    }

    /// Retries an engine write until it lands (back-pressure is not a reason to
    /// give up a file) or the server stops.
    fn durably<F, Fut>(&self, mut attempt: F) -> Result<(), Halt>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), EngineError>>,
    {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.runtime.block_on(attempt()) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(%error, "inbox write refused; retrying");
                    if self.pause(backoff) {
                        return Err(Halt::Stopping);
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn save(&self, state: &FileState) -> Result<(), Halt> {
        self.durably(|| self.engine.save_inbox_file(&state.key, &state.record))
    }

    fn load(&self, key: &[u8; 32]) -> Result<Option<InboxFileRecord>, Halt> {
        self.engine
            .inbox_file(key)
            .map_err(|e| Halt::Failed(e.to_string()))
    }

    /// Processes `processing/<name>` to the end: filed in `processed/` or
    /// `rejected/`, or an error leaving it where it is.
    fn process(&mut self, name: &OsString) -> Result<(), Halt> {
        let path = self.dirs.processing.join(name);
        let Some(text_name) = name.to_str().map(str::to_string) else {
            let shown = name.to_string_lossy().replace('\u{fffd}', "_");
            return self.reject_whole(
                name,
                &shown,
                Code::NotCsv.as_str(),
                "the file name is not UTF-8".to_string(),
            );
        };
        // A file that cannot be opened as a regular file (permissions, a symlink
        // or device swapped in) is filed as rejected, not retried forever.
        let size = match files::open_regular(&path).and_then(|f| f.metadata()) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                let detail = format!("the file cannot be read: {error}");
                return self.reject_whole(name, &text_name, Code::Unreadable.as_str(), detail);
            }
            Err(error) => return Err(error.into()),
        };
        if size > self.inbox.file_bytes_max {
            let detail = format!(
                "the file is {size} bytes, more than file_bytes_max ({})",
                self.inbox.file_bytes_max
            );
            return self.reject_whole(name, &text_name, Code::FileTooLarge.as_str(), detail);
        }
        let stop = self.stop.clone();
        let mut keep_going = || !matches!(stop.try_recv(), Err(TryRecvError::Disconnected));
        let Some(print) = files::fingerprint(
            &path,
            &self.inbox.source,
            text_name.as_bytes(),
            &mut keep_going,
        )?
        else {
            return Err(Halt::Stopping);
        };
        if print.binary {
            let detail = "binary content (a NUL byte near the start): not a CSV file".to_string();
            return self.reject_whole(name, &text_name, Code::NotCsv.as_str(), detail);
        }
        let digest_hex = hex::encode(print.digest);
        let file_id = format!("inbox-{}", &digest_hex[..20]);
        let record = self.load(&print.digest)?;
        let fresh = record.is_none();
        let mut record = record.unwrap_or_else(|| InboxFileRecord {
            file_name: text_name.clone(),
            started_at_ms: now_ms(),
            ..InboxFileRecord::default()
        });
        let mut state = FileState {
            name: text_name,
            key: print.digest,
            correlation: Arc::from(file_id.as_str()),
            file_id,
            digest_hex,
            bytes: print.size,
            record: InboxFileRecord::default(),
        };
        if let Some(finish) = record.finished.clone() {
            state.record = record;
            // Filed before: this is the same file dropped again. Not filed yet:
            // a restart came between the record and the move; finish filing.
            if self.dirs.processed.join(&finish.processed_name).exists() {
                return self.file_duplicate(&state, &finish);
            }
            return self.file(state);
        }
        if !fresh {
            record.resumed += 1;
            tracing::info!(file = %state.name, lines_done = record.lines_done, "resuming inbox file");
        }
        state.record = record;
        match self.read_rows(&path, &mut state)? {
            Some((code, detail)) => self.reject_whole(name, &state.name.clone(), code, detail),
            None => self.file(state),
        }
    }

    /// Reads and applies every row after `lines_done`. `Some((code, reason))`
    /// when the file cannot be read as this partner's CSV at all.
    fn read_rows(
        &mut self,
        path: &Path,
        state: &mut FileState,
    ) -> Result<Option<(&'static str, String)>, Halt> {
        let delimiter = self.inbox.delimiter_byte();
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(files::LineLimit::new(BufReader::new(files::open_regular(
                path,
            )?)));
        let mut record = csv::ByteRecord::new();
        let mut header_bytes = None;
        let header = if self.inbox.has_header {
            if !reader.read_byte_record(&mut record)? {
                // An empty file: nothing to do (partners send these for "no news").
                return Ok(None);
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
                    return Ok(Some((
                        Code::NotCsv.as_str(),
                        "the header row is not UTF-8 text".to_string(),
                    )))
                }
            }
        } else {
            None
        };
        let layout = match Layout::resolve(&self.inbox, header.as_deref()) {
            Ok(layout) => layout,
            Err(reason) => return Ok(Some((Code::MissingColumn.as_str(), reason))),
        };
        let mut rejects = RejectsFile::open(
            self.dirs
                .processing
                .join(format!(".{}.rejects", state.file_id)),
            state.record.rejects_bytes,
            delimiter,
            header_bytes,
        )?;
        let mut chunk = Vec::with_capacity(self.chunk_rows);
        let mut first = true;
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) if files::is_line_too_long(&error) => {
                    return Ok(Some((
                        Code::RowTooLarge.as_str(),
                        format!(
                            "a line is longer than {} bytes: not this partner's CSV",
                            files::LINE_BYTES_MAX
                        ),
                    )));
                }
                Err(error) => return Err(error.into()),
            }
            // Quoted line breaks can join many short lines into one record:
            // bound the record itself before it is copied into a row.
            if record.as_slice().len() > files::LINE_BYTES_MAX || record.len() > RECORD_FIELDS_MAX {
                return Ok(Some((
                    Code::RowTooLarge.as_str(),
                    format!(
                        "a record is over {} bytes or {RECORD_FIELDS_MAX} fields: not this partner's CSV",
                        files::LINE_BYTES_MAX
                    ),
                )));
            }
            if first && header.is_none() && record.len() < layout.width() {
                return Ok(Some((
                    Code::MissingColumn.as_str(),
                    format!(
                        "the first row has {} fields, the layout needs at least {}: not this partner's CSV",
                        record.len(),
                        layout.width()
                    ),
                )));
            }
            first = false;
            // The record's number (the header is 1), not `line()`: csv counts
            // only `\n` there, and a file with bare `\r` line ends would give
            // every row the same number (and event id).
            let line = record.position().map_or(0, |p| p.record() + 1);
            if line <= state.record.lines_done {
                continue;
            }
            if record
                .iter()
                .all(|cell| cell.iter().all(u8::is_ascii_whitespace))
            {
                continue; // a blank row
            }
            chunk.push(self.parse_row(&layout, state, line, &record));
            if chunk.len() >= self.chunk_rows {
                self.run_chunk(state, &mut rejects, std::mem::take(&mut chunk))?;
                if self.stopping() {
                    return Err(Halt::Stopping);
                }
            }
        }
        if !chunk.is_empty() {
            self.run_chunk(state, &mut rejects, chunk)?;
        }
        Ok(None)
    }

    fn parse_row(
        &self,
        layout: &Layout,
        state: &FileState,
        line: u64,
        record: &csv::ByteRecord,
    ) -> Row {
        let cells: Vec<Vec<u8>> = record.iter().map(<[u8]>::to_vec).collect();
        let text: Result<Vec<&str>, _> = record.iter().map(std::str::from_utf8).collect();
        let event_id = format!("{}-{line}", state.file_id);
        let (parsed, payload) = match text {
            Ok(text) => {
                let context = RowContext {
                    config: &self.engine.config,
                    inbox: &self.inbox,
                    layout,
                    file: &state.name,
                };
                let parsed = row_event(&context, event_id, line, &text);
                (parsed, layout.payload(&state.name, line, &text))
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
                (Err(error), layout.payload(&state.name, line, &shown))
            }
        };
        Row {
            line,
            cells,
            parsed,
            payload,
        }
    }

    fn rejection(
        &self,
        state: &FileState,
        row: &Row,
        code: &'static str,
        detail: String,
    ) -> Rejection {
        let event_id = format!("{}-{}", state.file_id, row.line);
        match &row.parsed {
            Ok(event) => Rejection {
                event_id,
                type_name: event.type_name,
                source: event.source.clone(),
                sku: Some(event.sku.clone()),
                location: Some(event.location.clone()),
                payload: row.payload.clone(),
                code,
                detail,
            },
            Err(error) => Rejection {
                event_id,
                type_name: error.type_label,
                source: self.inbox.source.clone(),
                sku: error.sku.clone(),
                location: error.location.clone(),
                payload: row.payload.clone(),
                code,
                detail,
            },
        }
    }

    /// Gives every row of the chunk a durable outcome, then moves the file's
    /// progress past it (see the module doc for the order of writes).
    fn run_chunk(
        &mut self,
        state: &mut FileState,
        rejects: &mut RejectsFile,
        rows: Vec<Row>,
    ) -> Result<(), Halt> {
        let Some(last_line) = rows.last().map(|row| row.line) else {
            return Ok(());
        };
        // Rows a run before a restart already rejected and queued.
        let ahead: HashMap<u64, (String, String)> = state
            .record
            .rejected_ahead
            .iter()
            .map(|(line, code, detail)| (*line, (code.clone(), detail.clone())))
            .collect();
        let mut rejected: Vec<(usize, String, String)> = Vec::new();
        let mut to_queue: Vec<(usize, Rejection)> = Vec::new();
        let mut pending: Vec<usize> = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            if let Some((code, detail)) = ahead.get(&row.line) {
                rejected.push((index, code.clone(), detail.clone()));
                continue;
            }
            match &row.parsed {
                Ok(_) => pending.push(index),
                Err(error) => {
                    let rejection = self.rejection(state, row, error.code, error.detail.clone());
                    to_queue.push((index, rejection));
                }
            }
        }
        let (mut applied, mut already_applied) = (0u64, 0u64);
        let mut backoff = BACKOFF_MIN;
        loop {
            if !to_queue.is_empty() {
                for (index, rejection) in &to_queue {
                    state.record.rejected_ahead.push((
                        rows[*index].line,
                        rejection.code.to_string(),
                        rejection.detail.clone(),
                    ));
                }
                let queued: Vec<Rejection> = to_queue.iter().map(|(_, r)| r.clone()).collect();
                self.durably(|| {
                    self.engine.record_rejections(
                        queued.clone(),
                        &state.correlation,
                        Some((&state.key, &state.record)),
                    )
                })?;
                for (index, rejection) in to_queue.drain(..) {
                    rejected.push((index, rejection.code.to_string(), rejection.detail));
                }
            }
            if pending.is_empty() {
                break;
            }
            let events: Vec<WarehouseEvent> = pending
                .iter()
                .filter_map(|index| rows[*index].parsed.as_ref().ok().cloned())
                .collect();
            let outcomes = self.runtime.block_on(
                self.engine
                    .apply_events_in_order(&events, state.correlation.clone()),
            );
            let mut next = Vec::new();
            let mut progressed = false;
            for (index, outcome) in pending.iter().zip(outcomes) {
                let Some(outcome) = outcome else {
                    next.push(*index); // after a stopped row of its position
                    continue;
                };
                match (outcome.status, outcome.code) {
                    (EventStatus::Applied, _) => {
                        applied += 1;
                        if let Some(seq) = outcome.seq {
                            let record = &mut state.record;
                            record.first_seq = Some(record.first_seq.map_or(seq, |s| s.min(seq)));
                            record.last_seq = Some(record.last_seq.map_or(seq, |s| s.max(seq)));
                        }
                        progressed = true;
                    }
                    // Ids are this file's: applied by it before a restart.
                    (EventStatus::Duplicate, _) => {
                        already_applied += 1;
                        progressed = true;
                    }
                    // Back-pressure is not the row's fault: try it again.
                    (EventStatus::Rejected, Some(code)) if code == Code::Unavailable.as_str() => {
                        next.push(*index)
                    }
                    (EventStatus::Rejected, code) => {
                        let code = code.unwrap_or(Code::BadRequest.as_str());
                        let detail = outcome.detail.unwrap_or_default();
                        let rejection = self.rejection(state, &rows[*index], code, detail);
                        to_queue.push((*index, rejection));
                        progressed = true;
                    }
                }
            }
            pending = next;
            if !progressed && !pending.is_empty() {
                if self.pause(backoff) {
                    return Err(Halt::Stopping);
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            } else {
                backoff = BACKOFF_MIN;
            }
        }
        rejected.sort_by_key(|(index, _, _)| rows[*index].line);
        let lines: Vec<(&Row, &str, &str)> = rejected
            .iter()
            .map(|(index, code, detail)| (&rows[*index], code.as_str(), detail.as_str()))
            .collect();
        rejects.append(&lines)?;
        let record = &mut state.record;
        record.lines_done = last_line;
        record.applied += applied;
        record.already_applied += already_applied;
        record.rejected += rejected.len() as u64;
        record.rejects_bytes = rejects.len;
        record
            .rejected_ahead
            .retain(|(line, _, _)| *line > last_line);
        self.save(state)
    }

    fn rows_of(record: &InboxFileRecord) -> u64 {
        record.applied + record.already_applied + record.rejected
    }

    fn result_json(&self, state: &FileState, finish: &InboxFinish) -> Value {
        let record = &state.record;
        json!({
            "file": state.name,
            "source": self.inbox.source,
            "status": "processed",
            "file_id": state.file_id,
            "sha256": state.digest_hex,
            "bytes": state.bytes,
            "rows": Self::rows_of(record),
            "applied": record.applied,
            "already_applied": record.already_applied,
            "rejected": record.rejected,
            "duplicate": 0,
            "first_seq": record.first_seq,
            "last_seq": record.last_seq,
            "rejected_rows_file": finish.rejected_name.as_ref().map(|n| format!("rejected/{n}")),
            "resumed": record.resumed,
            "started_at": rfc3339(record.started_at_ms),
            "finished_at": rfc3339(finish.finished_at_ms),
        })
    }

    /// Files a fully processed file: names decided and recorded first, then the
    /// rejected rows, the result file and the move (each safe to do again).
    fn file(&mut self, mut state: FileState) -> Result<(), Halt> {
        if state.record.finished.is_none() {
            let processed_name = files::free_name(&self.dirs.processed, &state.name)?;
            let rejected_name = if state.record.rejected > 0 {
                Some(files::free_name(
                    &self.dirs.rejected,
                    &rejects_name(&state.name),
                )?)
            } else {
                None
            };
            state.record.finished = Some(InboxFinish {
                processed_name,
                rejected_name,
                finished_at_ms: now_ms(),
            });
            self.save(&state)?;
        }
        let Some(finish) = state.record.finished.clone() else {
            return Err(Halt::Failed("finished record missing".to_string()));
        };
        let partial = self
            .dirs
            .processing
            .join(format!(".{}.rejects", state.file_id));
        match &finish.rejected_name {
            Some(rejected_name) if partial.exists() => {
                files::rename_durably(&partial, &self.dirs.rejected.join(rejected_name))?;
            }
            Some(_) => {}
            None => match fs::remove_file(&partial) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error.into()),
                _ => {}
            },
        }
        let result = self.result_json(&state, &finish);
        let text = serde_json::to_vec_pretty(&result).map_err(|e| Halt::Failed(e.to_string()))?;
        files::write_atomically(
            &self
                .dirs
                .processed
                .join(format!("{}{RESULT_SUFFIX}", finish.processed_name)),
            &text,
        )?;
        files::rename_durably(
            &self.dirs.processing.join(&state.name),
            &self.dirs.processed.join(&finish.processed_name),
        )?;
        self.count_file("processed");
        let record = &state.record;
        tracing::info!(
            file = %state.name,
            source = %self.inbox.source,
            applied = record.applied,
            already_applied = record.already_applied,
            rejected = record.rejected,
            "inbox file processed"
        );
        Ok(())
    }

    /// The same file (name and content) again: nothing is applied or queued;
    /// it is filed with a result that points at the first one.
    fn file_duplicate(&mut self, state: &FileState, first: &InboxFinish) -> Result<(), Halt> {
        let processed_name = files::free_name(&self.dirs.processed, &state.name)?;
        let rows = Self::rows_of(&state.record);
        let result = json!({
            "file": state.name,
            "source": self.inbox.source,
            "status": "duplicate",
            "file_id": state.file_id,
            "sha256": state.digest_hex,
            "bytes": state.bytes,
            "duplicate_of": format!("processed/{}", first.processed_name),
            "rows": rows,
            "applied": 0,
            "already_applied": 0,
            "rejected": 0,
            "duplicate": rows,
            "finished_at": rfc3339(now_ms()),
        });
        let text = serde_json::to_vec_pretty(&result).map_err(|e| Halt::Failed(e.to_string()))?;
        files::write_atomically(
            &self
                .dirs
                .processed
                .join(format!("{processed_name}{RESULT_SUFFIX}")),
            &text,
        )?;
        files::rename_durably(
            &self.dirs.processing.join(&state.name),
            &self.dirs.processed.join(&processed_name),
        )?;
        self.count_file("duplicate");
        tracing::info!(file = %state.name, source = %self.inbox.source, duplicate_of = %first.processed_name, "inbox file dropped again: nothing applied");
        Ok(())
    }

    /// A file that cannot be read as this partner's CSV at all: queued as an
    /// exception and moved to `rejected/` whole, with a result file saying why.
    fn reject_whole(
        &mut self,
        name: &OsString,
        shown: &str,
        code: &'static str,
        detail: String,
    ) -> Result<(), Halt> {
        let rejected_name = files::free_name(&self.dirs.rejected, shown)?;
        let record = ExceptionRecord {
            source: Some(self.inbox.source.clone()),
            payload: Some(
                json!({"file": shown, "rejected_file": format!("rejected/{rejected_name}")})
                    .to_string(),
            ),
            ..ExceptionRecord::new(
                ExceptionKind::RejectedFile,
                code,
                detail.clone(),
                format!("inbox-{}", self.inbox.source),
                now_ms(),
            )
        };
        self.durably(|| async { self.engine.record_exception(record.clone()).await.map(drop) })?;
        let result = json!({
            "file": shown,
            "source": self.inbox.source,
            "status": "rejected",
            "code": code,
            "reason": detail,
            "finished_at": rfc3339(now_ms()),
        });
        let text = serde_json::to_vec_pretty(&result).map_err(|e| Halt::Failed(e.to_string()))?;
        files::write_atomically(
            &self
                .dirs
                .rejected
                .join(format!("{rejected_name}{RESULT_SUFFIX}")),
            &text,
        )?;
        files::rename_durably(
            &self.dirs.processing.join(name),
            &self.dirs.rejected.join(&rejected_name),
        )?;
        self.count_file("rejected");
        tracing::warn!(file = %shown, source = %self.inbox.source, code, reason = %detail, "inbox file rejected whole");
        Ok(())
    }
}
