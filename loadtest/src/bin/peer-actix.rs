//! `peer-actix [--listen ADDR] [--workers N]`: the "HTTP ceiling" stockwire is
//! compared with by `scripts/bench-peers.sh`. A minimal actix-web server that
//! answers `POST /v1/reservations` with the same request body as stockwire
//! (decoded strictly with serde), checks and takes availability in a
//! `DashMap<sku, (on_hand, reserved)>`, keeps the reservation in memory and
//! answers 201 with a small JSON reservation.
//!
//! What it does not do, on purpose: no journal (nothing survives a restart), no
//! auth, no rate limits, no idempotency keys, no expiry, no channels or
//! locations (a line's `location` is echoed back), no metrics, no logs. Unknown
//! SKUs start with plenty of stock. `GET /healthz` answers 200 (readiness).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use clap::Parser;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// On-hand units of a SKU the server has not seen yet.
const INITIAL_ON_HAND: i64 = 1_000_000_000;
/// Largest quantity a line may ask for (as stockwire: 1..=10^9).
const QTY_MAX: i64 = 1_000_000_000;
/// Most lines per reservation (as stockwire's default).
const LINES_MAX: usize = 100;
/// TTL when the request gives none.
const DEFAULT_TTL_SECONDS: u64 = 900;
/// Longest TTL accepted (30 days, as stockwire).
const TTL_SECONDS_MAX: u64 = 2_592_000;

#[derive(Parser)]
#[command(about = "Minimal actix-web + DashMap reservation server (the HTTP ceiling)")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// HTTP worker threads (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveRequest {
    #[serde(default)]
    reservation_id: Option<String>,
    channel: String,
    #[serde(default)]
    order_ref: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    lines: Vec<LineRequest>,
    #[serde(default)]
    split: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    sku: String,
    #[serde(default)]
    location: Option<String>,
    qty: i64,
}

#[derive(Clone, Serialize)]
struct Line {
    sku: String,
    location: Option<String>,
    qty: i64,
}

#[derive(Clone, Serialize)]
struct Reservation {
    reservation_id: String,
    channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_ref: Option<String>,
    status: &'static str,
    expires_at: String,
    lines: Vec<Line>,
}

#[derive(Default)]
struct State {
    /// sku -> (on_hand, reserved).
    positions: DashMap<String, (i64, i64)>,
    reservations: DashMap<String, Reservation>,
    next_id: AtomicU64,
}

fn problem(status: StatusCode, code: &str, detail: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": detail,
            "code": code,
        }))
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Takes `qty` of `sku` if available; false (nothing taken) otherwise.
fn take(state: &State, sku: &str, qty: i64) -> bool {
    // Look up by &str first: no key allocation for a SKU already known.
    let mut position = match state.positions.get_mut(sku) {
        Some(position) => position,
        None => state
            .positions
            .entry(sku.to_owned())
            .or_insert((INITIAL_ON_HAND, 0)),
    };
    let (on_hand, reserved) = *position;
    if on_hand - reserved < qty {
        return false;
    }
    position.1 = reserved + qty;
    true
}

fn give_back(state: &State, sku: &str, qty: i64) {
    if let Some(mut position) = state.positions.get_mut(sku) {
        position.1 -= qty;
    }
}

async fn reserve(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let request: ReserveRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let code = if error.to_string().contains("unknown field") {
                "unknown_field"
            } else {
                "bad_request"
            };
            return problem(StatusCode::BAD_REQUEST, code, &error.to_string());
        }
    };
    let _ = request.split;
    if request.lines.is_empty() || request.lines.len() > LINES_MAX {
        return problem(StatusCode::BAD_REQUEST, "bad_request", "1..=100 lines");
    }
    let ids_ok = valid_id(&request.channel)
        && request.reservation_id.as_deref().is_none_or(valid_id)
        && request
            .lines
            .iter()
            .all(|line| valid_id(&line.sku) && line.location.as_deref().is_none_or(valid_id));
    if !ids_ok {
        return problem(StatusCode::BAD_REQUEST, "invalid_id", "bad id");
    }
    if request
        .lines
        .iter()
        .any(|line| !(1..=QTY_MAX).contains(&line.qty))
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "quantity_out_of_range",
            "qty must be 1..=1000000000",
        );
    }
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(1..=TTL_SECONDS_MAX).contains(&ttl) {
        return problem(
            StatusCode::BAD_REQUEST,
            "quantity_out_of_range",
            "ttl_seconds must be 1..=2592000",
        );
    }
    if let Some(id) = &request.reservation_id {
        if let Some(existing) = state.reservations.get(id) {
            return HttpResponse::Ok().json(existing.value().clone());
        }
    }
    // All or nothing: take line by line, give back on the first shortage.
    for (index, line) in request.lines.iter().enumerate() {
        if !take(&state, &line.sku, line.qty) {
            for earlier in &request.lines[..index] {
                give_back(&state, &earlier.sku, earlier.qty);
            }
            return problem(
                StatusCode::CONFLICT,
                "insufficient_available",
                &format!("{} is short", line.sku),
            );
        }
    }
    let id = request
        .reservation_id
        .unwrap_or_else(|| format!("res_{:016x}", state.next_id.fetch_add(1, Ordering::Relaxed)));
    let reservation = Reservation {
        reservation_id: id.clone(),
        channel: request.channel,
        order_ref: request.order_ref,
        status: "held",
        expires_at: rfc3339(unix_now() + ttl),
        lines: request
            .lines
            .into_iter()
            .map(|line| Line {
                sku: line.sku,
                location: line.location,
                qty: line.qty,
            })
            .collect(),
    };
    let response = HttpResponse::Created().json(&reservation);
    state.reservations.insert(id, reservation);
    response
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// The allocator stockwire's server uses, so the two differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let workers = cli
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let state = web::Data::new(State::default());
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/v1/reservations", web::post().to(reserve))
                .route("/healthz", web::get().to(healthz))
        })
        .workers(workers)
        .bind(cli.listen)?
        .run()
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn take_refuses_beyond_on_hand_and_takes_nothing() {
        let state = State::default();
        state.positions.insert("s".into(), (3, 0));
        assert!(take(&state, "s", 2));
        assert!(!take(&state, "s", 2));
        assert_eq!(*state.positions.get("s").unwrap(), (3, 2));
        give_back(&state, "s", 2);
        assert_eq!(*state.positions.get("s").unwrap(), (3, 0));
    }
}
