//! One inbox file's job, from `processing/` to filed: recognise it (its
//! fingerprint, and the progress record of a file seen before), read and
//! apply its rows chunk by chunk ([`super::reader`], [`super::progress`]),
//! then file it in `processed/` with its result file (and its rejected rows
//! in `rejected/`), or reject it whole when it is not this partner's CSV.
//!
//! A file is filed (moved to `processed/`) only after its last chunk's record
//! is durable and its result file is written; each filing step is safe to
//! do again after a restart. What it must not do: apply or reject a row
//! itself (that is [`super::progress`]), or hold the whole file in memory.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::TryRecvError;
use serde_json::{json, Value};

use super::files::{self, RESULT_SUFFIX};
use super::progress::{rows_of, FileState};
use super::reader::{Next, Opened, RowReader, Source};
use super::rejects::{rejects_name, RejectsFile};
use super::worker::{Halt, Worker};
use crate::codes::Code;
use crate::input::rfc3339;
use crate::storage::records::{ExceptionKind, ExceptionRecord, InboxFileRecord, InboxFinish};

impl Worker {
    /// Processes `processing/<name>` to the end: filed in `processed/` or
    /// `rejected/`, or an error leaving it where it is.
    pub(super) fn process(&mut self, name: &OsString) -> Result<(), Halt> {
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
            started_at_ms: self.engine.now_ms(),
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
        let (mut rows, header) = match RowReader::open(path, &self.inbox)? {
            Opened::Empty => return Ok(None),
            Opened::Refused(code, reason) => return Ok(Some((code, reason))),
            Opened::Rows { rows, header } => (rows, header),
        };
        let mut rejects = RejectsFile::open(
            self.dirs
                .processing
                .join(format!(".{}.rejects", state.file_id)),
            state.record.rejects_bytes,
            self.inbox.delimiter_byte(),
            header,
        )?;
        let mut chunk = Vec::with_capacity(self.chunk_rows);
        loop {
            let source = Source {
                config: &self.engine.config,
                inbox: &self.inbox,
                file: &state.name,
                file_id: &state.file_id,
            };
            match rows.next(&source, state.record.lines_done)? {
                Next::Row(row) => chunk.push(row),
                Next::End => break,
                Next::Refused(code, reason) => return Ok(Some((code, reason))),
            }
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

    fn result_json(&self, state: &FileState, finish: &InboxFinish) -> Value {
        let record = &state.record;
        json!({
            "file": state.name,
            "source": self.inbox.source,
            "status": "processed",
            "file_id": state.file_id,
            "sha256": state.digest_hex,
            "bytes": state.bytes,
            "rows": rows_of(record),
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
                finished_at_ms: self.engine.now_ms(),
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
        let rows = rows_of(&state.record);
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
            "finished_at": rfc3339(self.engine.now_ms()),
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
                self.engine.now_ms(),
            )
        };
        self.durably(|| async { self.engine.record_exception(record.clone()).await.map(drop) })?;
        let result = json!({
            "file": shown,
            "source": self.inbox.source,
            "status": "rejected",
            "code": code,
            "reason": detail,
            "finished_at": rfc3339(self.engine.now_ms()),
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
