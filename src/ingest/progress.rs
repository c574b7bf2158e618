//! A chunk of rows to a durable outcome, and the file's progress record
//! (`Space::Inbox`) that says how far the file got.
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
//! What it must not do: change a position other than through
//! [`Engine::apply_events_in_order`](crate::engine::Engine::apply_events_in_order),
//! or move the progress record past a row without a durable outcome.

use std::collections::HashMap;
use std::sync::Arc;

use super::reader::Row;
use super::rejects::RejectsFile;
use super::worker::{Halt, Worker};
use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::codes::Code;
use crate::engine::{EventStatus, Rejection, WarehouseEvent};
use crate::storage::records::InboxFileRecord;

/// The rows a progress record accounts for.
pub(super) fn rows_of(record: &InboxFileRecord) -> u64 {
    record.applied + record.already_applied + record.rejected
}

/// The file being processed.
pub(super) struct FileState {
    pub(super) name: String,
    pub(super) key: [u8; 32],
    /// `inbox-<20 hex>`: the event id prefix and every event's correlation id.
    pub(super) file_id: String,
    pub(super) correlation: Arc<str>,
    pub(super) digest_hex: String,
    pub(super) bytes: u64,
    pub(super) record: InboxFileRecord,
}

impl Worker {
    pub(super) fn save(&self, state: &FileState) -> Result<(), Halt> {
        self.durably(|| self.engine.save_inbox_file(&state.key, &state.record))
    }

    pub(super) fn load(&self, key: &[u8; 32]) -> Result<Option<InboxFileRecord>, Halt> {
        self.engine
            .inbox_file(key)
            .map_err(|e| Halt::Failed(e.to_string()))
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
    pub(super) fn run_chunk(
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
        record.rejects_bytes = rejects.bytes();
        record
            .rejected_ahead
            .retain(|(line, _, _)| *line > last_line);
        self.save(state)
    }
}
