//! `POST /v1/reconciliations`: an ERP or WMS on-hand snapshot against the
//! engine's positions. JSON (`{"source","positions":[...],"apply"}`, within
//! `max_body_bytes`) or, for large snapshots, CSV (`Content-Type: text/csv`,
//! `?source=&apply=`, header `sku,location,on_hand`) streamed in chunks of
//! rows: the upload is never held whole, up to `reconciliation_max_bytes` and
//! `reconciliation_rows_max`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use super::access::Caller;
use super::error::ApiError;
use super::idempotency::{self, Reply};
use super::input::{amount, check_id, parse_json, read_body};
use super::schema::{ReconciliationDifference, ReconciliationReport, RowProblem};
use super::{correlation_id, AppState};
use crate::codes::Code;
use crate::engine::{Engine, ReconReport, Reconciliation, SnapshotRow, RECONCILE_CHUNK};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PositionBody {
    sku: String,
    location: String,
    #[schema(value_type = u64, minimum = 0, maximum = 1000000000)]
    on_hand: serde_json::Number,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReconciliationBody {
    /// The system of record the snapshot comes from (e.g. `erp`).
    source: String,
    positions: Vec<PositionBody>,
    /// Correct each difference (only where `source` is authoritative for on-hand).
    #[serde(default)]
    apply: bool,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CsvQuery {
    /// CSV uploads only: the source.
    source: Option<String>,
    /// CSV uploads only: correct the differences.
    apply: Option<bool>,
}

/// The run's report, as OpenAPI describes it.
fn report(run: Reconciliation) -> ReconciliationReport {
    let found: ReconReport = run.report;
    let truncated = (found.exceptions.len() as u64) < found.differences
        || (found.errors.len() as u64) < found.rejected_rows;
    ReconciliationReport {
        source: run.source,
        apply: run.apply,
        checked: found.checked,
        matched: found.matched,
        differences: found.differences,
        applied: found.applied,
        exceptions: found
            .exceptions
            .into_iter()
            .map(|d| ReconciliationDifference {
                sku: d.sku,
                location: d.location,
                engine_on_hand: d.engine_on_hand,
                source_on_hand: d.source_on_hand,
                diff: d.diff,
                applied: d.applied,
                seq: d.seq,
                code: d.code,
            })
            .collect(),
        rejected_rows: found.rejected_rows,
        errors: found
            .errors
            .into_iter()
            .map(|e| RowProblem {
                row: e.row,
                code: e.code,
                detail: e.detail,
            })
            .collect(),
        truncated,
    }
}

/// Checks one row (ids, the caller's scope) and adds it to `chunk`, or records
/// why not.
fn admit_row(
    run: &mut Reconciliation,
    caller: &Caller,
    chunk: &mut Vec<SnapshotRow>,
    row: SnapshotRow,
) {
    let check = check_id("sku", &row.sku)
        .and_then(|_| check_id("location", &row.location))
        .map_err(ApiError::from)
        .and_then(|_| caller.may_touch(&row.location));
    match check {
        Ok(_) => chunk.push(row),
        Err(error) => {
            let (_, code) = error.status_and_code();
            run.report.reject_row(row.row, code, error.to_string());
        }
    }
}

async fn flush(
    engine: &Engine,
    run: &mut Reconciliation,
    chunk: &mut Vec<SnapshotRow>,
) -> Result<(), ApiError> {
    if !chunk.is_empty() {
        engine.reconcile_chunk(run, std::mem::take(chunk)).await?;
    }
    Ok(())
}

async fn reconcile_json(
    engine: &Engine,
    caller: &Caller,
    body: &[u8],
    correlation: std::sync::Arc<str>,
) -> Result<Reply<ReconciliationReport>, ApiError> {
    let parsed: ReconciliationBody = parse_json(body)?;
    check_id("source", &parsed.source)?;
    caller.may_claim(&parsed.source)?;
    if parsed.positions.is_empty() {
        return Err(ApiError::BadRequest(
            "positions must not be empty".to_string(),
        ));
    }
    let mut run = Reconciliation::new(parsed.source, parsed.apply, correlation);
    let mut chunk = Vec::with_capacity(RECONCILE_CHUNK);
    for (index, position) in parsed.positions.into_iter().enumerate() {
        if !engine.row_is_mine(Some(&position.sku)) {
            continue;
        }
        // A bad row is a row error, as in a CSV upload: earlier chunks may
        // already be corrected, so the run must not end in an error here.
        let on_hand = match amount("on_hand", &position.on_hand) {
            Ok(on_hand) => on_hand,
            Err(error) => {
                run.report
                    .reject_row(index as u64 + 1, error.code.as_str(), error.detail);
                continue;
            }
        };
        let row = SnapshotRow {
            row: index as u64 + 1,
            sku: position.sku,
            location: position.location,
            on_hand,
        };
        admit_row(&mut run, caller, &mut chunk, row);
        if chunk.len() >= RECONCILE_CHUNK {
            flush(engine, &mut run, &mut chunk).await?;
        }
    }
    flush(engine, &mut run, &mut chunk).await?;
    Ok((StatusCode::OK, report(run)))
}

/// Column positions of `sku`, `location` and `on_hand` in the header row.
struct Columns {
    sku: usize,
    location: usize,
    on_hand: usize,
}

fn columns(header: &[&str]) -> Result<Columns, ApiError> {
    let find = |name: &str| {
        header
            .iter()
            .position(|h| {
                h.trim_start_matches('\u{feff}')
                    .trim()
                    .eq_ignore_ascii_case(name)
            })
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "the CSV header must name the columns sku, location and on_hand (missing {name})"
                ))
            })
    };
    Ok(Columns {
        sku: find("sku")?,
        location: find("location")?,
        on_hand: find("on_hand")?,
    })
}

/// A CSV upload being read: csv-core's push parser takes the body part by
/// part (quoted fields may span parts and lines), each record lands in a
/// bounded buffer, and full chunks of rows are compared as they fill.
struct CsvUpload<'a> {
    engine: &'a Engine,
    caller: &'a Caller,
    run: Reconciliation,
    columns: Option<Columns>,
    rows_seen: u64,
    rows_max: u64,
    chunk: Vec<SnapshotRow>,
    parser: csv_core::Reader,
    /// The record being read: its bytes and its field ends.
    out: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
}

impl CsvUpload<'_> {
    /// Parses one part of the body; an empty `input` means the body ended.
    async fn feed(&mut self, mut input: &[u8]) -> Result<(), ApiError> {
        loop {
            let (result, read, written, ended) = self.parser.read_record(
                input,
                &mut self.out[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[read..];
            self.out_len += written;
            self.ends_len += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty | csv_core::ReadRecordResult::End => {
                    return Ok(())
                }
                csv_core::ReadRecordResult::OutputFull => {
                    return Err(ApiError::BadRequest(format!(
                        "row {}: a CSV record is over {RECORD_BYTES_MAX} bytes",
                        self.rows_seen + 1
                    )))
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    return Err(ApiError::BadRequest(format!(
                        "row {}: a CSV record has over {RECORD_FIELDS_MAX} fields",
                        self.rows_seen + 1
                    )))
                }
                csv_core::ReadRecordResult::Record => {
                    let result = self.take_record().await;
                    self.out_len = 0;
                    self.ends_len = 0;
                    result?;
                }
            }
        }
    }

    /// The record just read: the header, or a row.
    async fn take_record(&mut self) -> Result<(), ApiError> {
        let mut fields = Vec::with_capacity(self.ends_len);
        let mut start = 0;
        for &end in &self.ends[..self.ends_len] {
            fields.push(std::str::from_utf8(&self.out[start..end]).map(str::trim));
            start = end;
        }
        if fields
            .iter()
            .all(|f| f.as_ref().is_ok_and(|f| f.is_empty()))
        {
            return Ok(());
        }
        let Some(cols) = self.columns.as_ref() else {
            let header: Vec<&str> = fields
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(|_| ApiError::BadRequest("the CSV header is not UTF-8".to_string()))?;
            self.columns = Some(columns(&header)?);
            return Ok(());
        };
        self.rows_seen += 1;
        if self.rows_seen > self.rows_max {
            return Err(ApiError::PayloadTooLarge(self.rows_max as usize));
        }
        let field = |i: usize| fields.get(i).cloned().unwrap_or(Ok(""));
        if !self.engine.row_is_mine(field(cols.sku).ok()) {
            return Ok(());
        }
        let (Ok(sku), Ok(location), Ok(on_hand)) =
            (field(cols.sku), field(cols.location), field(cols.on_hand))
        else {
            self.run.report.reject_row(
                self.rows_seen,
                Code::BadRequest.as_str(),
                "the row is not UTF-8".to_string(),
            );
            return Ok(());
        };
        match on_hand
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= crate::domain::QTY_MAX)
        {
            Some(on_hand) => {
                let row = SnapshotRow {
                    row: self.rows_seen,
                    sku: sku.to_string(),
                    location: location.to_string(),
                    on_hand,
                };
                admit_row(&mut self.run, self.caller, &mut self.chunk, row);
            }
            None => self.run.report.reject_row(
                self.rows_seen,
                Code::QuantityOutOfRange.as_str(),
                format!(
                    "on_hand {:?} is not an integer in 0..={}",
                    on_hand.chars().take(32).collect::<String>(),
                    crate::domain::QTY_MAX
                ),
            ),
        }
        if self.chunk.len() >= RECONCILE_CHUNK {
            flush(self.engine, &mut self.run, &mut self.chunk).await?;
        }
        Ok(())
    }
}

async fn reconcile_csv(
    engine: &Engine,
    caller: &Caller,
    state: &AppState,
    query: &CsvQuery,
    mut payload: web::Payload,
    correlation: std::sync::Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let source = query.source.clone().ok_or_else(|| {
        ApiError::BadRequest("a CSV upload names its source: ?source=erp".to_string())
    })?;
    check_id("source", &source)?;
    caller.may_claim(&source)?;
    let bytes_max = state.config.reconciliation_max_bytes;
    let mut upload = CsvUpload {
        engine,
        caller,
        run: Reconciliation::new(source, query.apply.unwrap_or(false), correlation),
        columns: None,
        rows_seen: 0,
        rows_max: state.config.reconciliation_rows_max,
        chunk: Vec::with_capacity(RECONCILE_CHUNK),
        parser: csv_core::Reader::new(),
        out: vec![0; RECORD_BYTES_MAX],
        out_len: 0,
        ends: vec![0; RECORD_FIELDS_MAX],
        ends_len: 0,
    };
    let mut received = 0usize;
    while let Some(part) = payload.next().await {
        let part = part.map_err(|e| super::input::body_error(e, bytes_max))?;
        received += part.len();
        if received > bytes_max {
            return Err(ApiError::PayloadTooLarge(bytes_max));
        }
        if !part.is_empty() {
            upload.feed(&part).await?;
        }
    }
    upload.feed(&[]).await?;
    flush(engine, &mut upload.run, &mut upload.chunk).await?;
    if upload.columns.is_none() {
        return Err(ApiError::BadRequest(
            "empty CSV: expected a header row sku,location,on_hand".to_string(),
        ));
    }
    Ok(HttpResponse::Ok().json(report(upload.run)))
}

/// Largest CSV record (its fields' bytes) and most fields per record.
const RECORD_BYTES_MAX: usize = 64 * 1024;
const RECORD_FIELDS_MAX: usize = 256;

#[utoipa::path(post, path = "/v1/reconciliations", tag = "reconciliations",
    params(CsvQuery, ("Idempotency-Key" = Option<String>, Header, description = "JSON bodies: replay-safe retries")),
    request_body(content(
        (ReconciliationBody = "application/json"),
        (String = "text/csv", example = "sku,location,on_hand\nsku-1,wh-east,10\n"),
    )),
    responses((status = 200, description = "what differs (with apply: what was corrected)", body = ReconciliationReport), super::schema::Errors))]
pub async fn post(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    query: web::Query<CsvQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let correlation = correlation_id(&request);
    let is_csv = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/csv"));
    if is_csv {
        return reconcile_csv(engine, &caller, &state, &query, payload, correlation).await;
    }
    if query.source.is_some() || query.apply.is_some() {
        return Err(ApiError::BadRequest(
            "?source= and ?apply= are for CSV uploads; a JSON body carries them".to_string(),
        ));
    }
    let body = read_body(payload, state.config.max_body_bytes).await?;
    idempotency::run(engine, &request, &body, |_| {
        reconcile_json(engine, &caller, &body, correlation)
    })
    .await
}
