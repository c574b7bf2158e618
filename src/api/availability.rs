//! `GET /v1/availability/{sku}` and `POST /v1/availability/query`: the full
//! view (every counter, per location and summed, plus every channel's view),
//! or one channel's view when `channel` is given.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::access::Caller;
use super::error::ApiError;
use super::input::{check_id, parse_json, read_body};
use super::schema::{
    Availability, AvailabilityItems, ChannelAvailability, ChannelAvailable, FullAvailability,
    LocationAvailable, LocationCounters, Totals,
};
use super::AppState;
use crate::actors::PositionReadout;
use crate::engine::{ChannelInfo, Engine, EngineError};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChannelQuery {
    /// Answer only this channel's view (a channel key always gets its own).
    channel: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct QueryBody {
    /// Up to `query_skus_max` (1000) SKUs.
    skus: Vec<String>,
    channel: Option<String>,
}

fn location_counters(readout: &PositionReadout) -> LocationCounters<'_> {
    let c = &readout.counters;
    LocationCounters {
        location: &readout.location,
        on_hand: c.on_hand,
        reserved: c.reserved,
        allocated: c.allocated,
        quarantined: c.quarantined,
        in_transit: c.in_transit,
        backordered: c.backordered,
        safety_stock: c.safety_stock,
        backorder_limit: c.backorder_limit,
        available: readout.available(),
        version: readout.version,
    }
}

/// What `channel` may sell over `readouts` (each position floored at 0:
/// an oversold position gives a channel nothing).
fn channel_available(channel: &ChannelInfo, readouts: &[PositionReadout]) -> i64 {
    readouts
        .iter()
        .filter(|r| channel.locations.contains(&r.location))
        .map(|r| r.channel_view(&channel.id).max(0))
        .fold(0i64, i64::saturating_add)
}

fn full<'a>(engine: &'a Engine, sku: &'a str, readouts: &'a [PositionReadout]) -> Availability<'a> {
    let sum = |f: &dyn Fn(&PositionReadout) -> i128| -> i128 { readouts.iter().map(f).sum() };
    let total = Totals {
        on_hand: sum(&|r| r.counters.on_hand.into()),
        reserved: sum(&|r| r.counters.reserved.into()),
        allocated: sum(&|r| r.counters.allocated.into()),
        quarantined: sum(&|r| r.counters.quarantined.into()),
        in_transit: sum(&|r| r.counters.in_transit.into()),
        backordered: sum(&|r| r.counters.backordered.into()),
        safety_stock: sum(&|r| r.counters.safety_stock.into()),
        available: sum(&|r| r.available().into()),
    };
    Availability::Full(FullAvailability {
        sku,
        locations: readouts.iter().map(location_counters).collect(),
        total,
        channels: engine
            .channels()
            .map(|c| ChannelAvailable {
                channel: &c.id,
                available: channel_available(c, readouts),
            })
            .collect(),
    })
}

fn channel_view<'a>(
    channel: &'a ChannelInfo,
    sku: &'a str,
    readouts: &'a [PositionReadout],
) -> Availability<'a> {
    Availability::Channel(ChannelAvailability {
        sku,
        channel: &channel.id,
        available: channel_available(channel, readouts),
        locations: readouts
            .iter()
            .filter(|r| channel.locations.contains(&r.location))
            .map(|r| LocationAvailable {
                location: &r.location,
                available: r.channel_view(&channel.id).max(0),
            })
            .collect(),
    })
}

/// The channel whose view to answer: the one asked for, or a channel key's own
/// (a channel key sees nothing else).
fn channel_of<'a>(
    engine: &'a Engine,
    caller: &Caller,
    channel: Option<&str>,
) -> Result<Option<&'a ChannelInfo>, ApiError> {
    if let Some(asked) = channel {
        caller.may_act_for(asked)?;
    }
    match channel.or(caller.own_channel()) {
        None => Ok(None),
        Some(id) => engine
            .channel(id)
            .map(Some)
            .ok_or_else(|| EngineError::UnknownChannel(format!("unknown channel {id}")).into()),
    }
}

#[utoipa::path(get, path = "/v1/availability/{sku}", tag = "availability",
    params(("sku" = String, Path, description = "SKU id"), ChannelQuery),
    responses((status = 200, description = "the SKU's availability", body = Availability), super::schema::Errors))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    sku: web::Path<String>,
    query: web::Query<ChannelQuery>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let sku = check_id("sku", &sku)?;
    let channel = channel_of(engine, &caller, query.channel.as_deref())?;
    let readouts = engine.read_sku(sku, None, None).await?;
    if readouts.is_empty() {
        return Err(EngineError::UnknownSku(sku.to_string()).into());
    }
    let body = match channel {
        Some(channel) => channel_view(channel, sku, &readouts),
        None => full(engine, sku, &readouts),
    };
    Ok(HttpResponse::Ok().json(body))
}

#[utoipa::path(post, path = "/v1/availability/query", tag = "availability",
    request_body = QueryBody,
    responses((status = 200, description = "one item per SKU, in order", body = AvailabilityItems), super::schema::Errors))]
pub async fn query(
    state: web::Data<AppState>,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let request: QueryBody = parse_json(&body)?;
    if request.skus.len() > state.config.query_skus_max {
        return Err(ApiError::BadRequest(format!(
            "at most {} skus per query",
            state.config.query_skus_max
        )));
    }
    for sku in &request.skus {
        check_id("sku", sku)?;
    }
    let channel = channel_of(engine, &caller, request.channel.as_deref())?;
    let reads = futures_util::future::join_all(
        request
            .skus
            .iter()
            .map(|sku| engine.read_sku(sku, None, None)),
    )
    .await;
    let reads: Vec<Vec<PositionReadout>> = reads.into_iter().collect::<Result<_, _>>()?;
    // An unknown SKU answers like a known one with nothing anywhere.
    let items = request
        .skus
        .iter()
        .zip(&reads)
        .map(|(sku, readouts)| match channel {
            Some(channel) => channel_view(channel, sku, readouts),
            None => full(engine, sku, readouts),
        })
        .collect();
    Ok(HttpResponse::Ok().json(AvailabilityItems { items }))
}
