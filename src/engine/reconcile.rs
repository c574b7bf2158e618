//! Reconciliation (SPEC §2): compare a system of record's on-hand snapshot
//! with the engine's positions, chunk by chunk, so a snapshot of millions of
//! rows never sits in memory. Each difference is counted, queued as a
//! `reconciliation_difference` exception (one open per source and position,
//! resolved by the run that corrects it), and with `apply` (only where the
//! source is authoritative for on-hand) corrected by a `correction`
//! adjustment whose delta the position computes itself, refused if the
//! position changed since it was compared.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;

use super::{Engine, EngineError};
use crate::actors::{Meta, PositionReadout};
use crate::domain::Command;
use crate::storage::records::{
    ExceptionKind, ExceptionRecord, ExceptionResolution, ExceptionStatus,
};
use crate::storage::{Space, WriteBatch};

/// Rows compared per chunk (one read per distinct SKU in it).
pub const RECONCILE_CHUNK: usize = 1000;
/// Differences (and row errors) listed in one report; all are counted, and
/// every difference is in the exception queue.
pub const REPORT_LIST_MAX: usize = 10_000;

/// One row of a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    /// 1-based row number in the upload (for errors and event ids).
    pub row: u64,
    pub sku: String,
    pub location: String,
    pub on_hand: u64,
}

#[derive(Debug, Clone)]
pub struct Difference {
    pub sku: String,
    pub location: String,
    pub engine_on_hand: u64,
    pub source_on_hand: u64,
    pub diff: i64,
    /// A correction was applied (`seq` is its log entry).
    pub applied: bool,
    pub seq: Option<u64>,
    /// Why it was not applied, when `apply` was asked.
    pub code: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct RowError {
    pub row: u64,
    pub code: &'static str,
    pub detail: String,
}

/// What a reconciliation found, accumulated over its chunks.
#[derive(Debug, Clone, Default)]
pub struct ReconReport {
    pub checked: u64,
    pub matched: u64,
    pub differences: u64,
    pub applied: u64,
    /// The first `REPORT_LIST_MAX` differences.
    pub exceptions: Vec<Difference>,
    pub rejected_rows: u64,
    /// The first `REPORT_LIST_MAX` row errors.
    pub errors: Vec<RowError>,
}

impl ReconReport {
    pub fn reject_row(&mut self, row: u64, code: &'static str, detail: String) {
        self.rejected_rows += 1;
        if self.errors.len() < REPORT_LIST_MAX {
            self.errors.push(RowError { row, code, detail });
        }
    }
}

/// One reconciliation run: its source, whether to correct, and its id (used in
/// the corrections' event ids).
pub struct Reconciliation {
    pub source: String,
    pub apply: bool,
    pub run_id: String,
    pub correlation_id: Arc<str>,
    pub report: ReconReport,
}

impl Reconciliation {
    pub fn new(source: String, apply: bool, correlation_id: Arc<str>) -> Reconciliation {
        Reconciliation {
            source,
            apply,
            run_id: hex::encode(rand::random::<[u8; 8]>()),
            correlation_id,
            report: ReconReport::default(),
        }
    }
}

/// `Space::Meta` key of the open difference exception for one source and position.
fn open_difference_key(source: &str, sku: &str, location: &str) -> Vec<u8> {
    format!("recon-open/{source}\0{sku}\0{location}").into_bytes()
}

impl Engine {
    /// The open difference exception a marker points at, if it is still open.
    fn open_difference(&self, marker: &[u8]) -> Result<Option<u64>, EngineError> {
        let Some(bytes) = self.shared.store.get(Space::Meta, marker)? else {
            return Ok(None);
        };
        let Ok(id) = <[u8; 8]>::try_from(bytes.as_slice()).map(u64::from_be_bytes) else {
            return Ok(None);
        };
        Ok(self
            .exception(id)?
            .filter(|(record, _)| record.status() == ExceptionStatus::Open)
            .map(|_| id))
    }

    /// Compares (and with `apply` corrects) one chunk of rows. Row ids are
    /// checked by the caller; unknown locations are row errors here.
    pub async fn reconcile_chunk(
        &self,
        run: &mut Reconciliation,
        rows: Vec<SnapshotRow>,
    ) -> Result<(), EngineError> {
        let mut by_sku: HashMap<String, Vec<SnapshotRow>> = HashMap::new();
        for row in rows {
            if self.location(&row.location).is_none() {
                run.report.reject_row(
                    row.row,
                    crate::codes::Code::UnknownLocation.as_str(),
                    format!("unknown location {}", row.location),
                );
                continue;
            }
            by_sku.entry(row.sku.clone()).or_default().push(row);
        }
        let groups: Vec<(String, Vec<SnapshotRow>)> = by_sku.into_iter().collect();
        let reads = join_all(groups.iter().map(|(sku, _)| self.read_sku(sku, None, None))).await;
        for ((sku, rows), readouts) in groups.into_iter().zip(reads) {
            let readouts: Vec<PositionReadout> = readouts?;
            for row in rows {
                run.report.checked += 1;
                let found = readouts.iter().find(|r| *r.location == *row.location);
                let (engine_on_hand, version) =
                    found.map_or((0, None), |r| (r.counters.on_hand, Some(r.version)));
                if engine_on_hand == row.on_hand {
                    run.report.matched += 1;
                    continue;
                }
                let difference = self
                    .difference(run, &sku, row, engine_on_hand, version)
                    .await?;
                self.metrics
                    .reconciliation_exceptions_total
                    .with_label_values(&[self.source_label(&run.source)])
                    .inc();
                run.report.differences += 1;
                if difference.applied {
                    run.report.applied += 1;
                }
                if run.report.exceptions.len() < REPORT_LIST_MAX {
                    run.report.exceptions.push(difference);
                }
            }
        }
        Ok(())
    }

    async fn difference(
        &self,
        run: &Reconciliation,
        sku: &str,
        row: SnapshotRow,
        engine_on_hand: u64,
        version: Option<u64>,
    ) -> Result<Difference, EngineError> {
        let diff = row.on_hand as i64 - engine_on_hand as i64;
        let event_id = format!("recon:{}:{}", run.run_id, row.row);
        let mut difference = Difference {
            sku: sku.to_string(),
            location: row.location.clone(),
            engine_on_hand,
            source_on_hand: row.on_hand,
            diff,
            applied: false,
            seq: None,
            code: None,
        };
        if run.apply {
            if !self
                .config
                .source_authoritative_for_on_hand(&run.source, &row.location)
            {
                difference.code = Some(crate::codes::Code::SourceNotAuthoritative.as_str());
            } else {
                let location = self
                    .location(&row.location)
                    .cloned()
                    .ok_or_else(|| EngineError::UnknownLocation(row.location.clone()))?;
                let meta = Meta {
                    event_id: event_id.clone(),
                    source: Arc::from(run.source.as_str()),
                    correlation_id: run.correlation_id.clone(),
                    occurred_at_ms: self.now_ms(),
                };
                // A position that did not exist is version 0: one created
                // since (a receipt) must refuse the correction too.
                let command = Command::Correct {
                    on_hand: row.on_hand,
                    expected_version: Some(version.unwrap_or(0)),
                };
                match self
                    .command(&Arc::from(sku), &location, command, meta, true)
                    .await
                {
                    Ok(outcome) => {
                        difference.applied = outcome.first_seq.is_some();
                        difference.seq = outcome.first_seq;
                    }
                    Err(error) => {
                        let error = EngineError::from(error);
                        if let EngineError::Unavailable(_) = error {
                            return Err(error);
                        }
                        difference.code = Some(super::error_code(&error).as_str());
                    }
                }
            }
        }
        // One open exception per (source, position): a nightly run that finds
        // the same difference again does not queue it again, and the run that
        // corrects it resolves the open one. Exception and marker are one write.
        let marker = open_difference_key(&run.source, sku, &row.location);
        match (self.open_difference(&marker)?, difference.applied) {
            (Some(_), false) => {}
            (Some(id), true) => {
                let mut unmark = WriteBatch::default();
                unmark.delete(Space::Meta, marker);
                let resolution = ExceptionResolution {
                    note: format!("corrected by reconciliation {}", run.run_id),
                    by: run.source.clone(),
                    at_ms: self.now_ms(),
                    retried_event_id: Some(event_id),
                    seq: difference.seq,
                    correlation_id: run.correlation_id.to_string(),
                };
                self.resolve_exception_with(id, resolution, unmark).await?;
            }
            (None, applied) => {
                let outcome = match (applied, difference.code) {
                    (true, _) => ": corrected".to_string(),
                    (false, Some(code)) => format!(": not corrected ({code})"),
                    (false, None) => String::new(),
                };
                let mut record = ExceptionRecord {
                    sku: Some(sku.to_string()),
                    location: Some(row.location),
                    event_id: applied.then_some(event_id),
                    source: Some(run.source.clone()),
                    payload: Some(
                        serde_json::json!({
                            "engine_on_hand": engine_on_hand,
                            "source_on_hand": row.on_hand,
                            "diff": diff,
                            "seq": difference.seq,
                        })
                        .to_string(),
                    ),
                    ..ExceptionRecord::new(
                        ExceptionKind::ReconciliationDifference,
                        difference.code.unwrap_or("on_hand_differs"),
                        format!(
                            "{} says on_hand {}, stockwire has {engine_on_hand} (diff {diff:+}){outcome}",
                            run.source, row.on_hand
                        ),
                        run.correlation_id.to_string(),
                        self.now_ms(),
                    )
                };
                if applied {
                    record.set_status(ExceptionStatus::Resolved);
                }
                let (id, mut batch) = self.exception_batch(record)?;
                if !applied {
                    batch.put(Space::Meta, marker, id.to_be_bytes().to_vec());
                }
                self.write(batch).await?;
            }
        }
        Ok(difference)
    }
}
