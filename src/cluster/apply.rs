//! Warehouse events for another partition group's SKUs, applied by that
//! group's owner over NATS request/reply on `stockwire.<stream>-g<g>.apply`.
//! This is how a 3PL inbox, which group 0's owner runs, applies the rows of
//! every group (docs/CLUSTER.md, "Partition groups"). Only a group's owner
//! answers on its subject; NATS permissions are the trust boundary, as for the
//! journal.
//!
//! Each request carries one position's events in file order or several
//! positions', each in order; the owner applies them as
//! [`Engine::apply_local_events_in_order`] does and answers every event's
//! outcome. A request that gets no answer is `unavailable` for its events, which
//! the inbox retries (event ids make a retry of an applied event `duplicate`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::link::Link;
use crate::codes::Code;
use crate::config::{ClusterConfig, EVENT_TYPES};
use crate::domain::{AdjustReason, Command, Qty, QuarantineAction};
use crate::engine::{
    Engine, EventCommand, EventOutcome, EventStatus, PartState, RemoteApply, WarehouseEvent,
    PART_STATES_PER_REQUEST,
};

/// How long a group's owner has to answer one request.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Requests a group's owner applies at once.
const CONCURRENT_REQUESTS: usize = 8;

/// The subject group `stream`'s owner applies events on.
pub fn apply_subject(stream: &str) -> String {
    format!("stockwire.{stream}.apply")
}

/// A warehouse event on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireEvent {
    event_id: String,
    type_name: String,
    source: String,
    occurred_at_ms: Option<i64>,
    sku: String,
    location: String,
    command: WireCommand,
    payload: String,
}

/// The commands a warehouse event carries.
#[derive(Debug, Serialize, Deserialize)]
enum WireCommand {
    Receipt {
        qty: u64,
    },
    Adjust {
        delta: i64,
        reason: AdjustReason,
    },
    Count {
        counted: u64,
        expected_version: Option<u64>,
    },
    Return {
        qty: u64,
        restockable: bool,
    },
    Quarantine {
        qty: u64,
        action: QuarantineAction,
    },
    InTransit {
        delta: i64,
    },
    TransferOut {
        transfer_id: String,
        to: String,
        qty: u64,
    },
    TransferIn {
        transfer_id: String,
        from: String,
        qty: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct ApplyRequest {
    correlation_id: String,
    events: Vec<WireEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireOutcome {
    event_id: String,
    /// `applied`, `duplicate` or `rejected`.
    status: String,
    seq: Option<u64>,
    code: Option<String>,
    detail: Option<String>,
}

/// One outcome per event, in the request's order; `None`: not tried, after an
/// earlier event of its position was rejected.
#[derive(Debug, Serialize, Deserialize)]
struct ApplyAnswer {
    outcomes: Vec<Option<WireOutcome>>,
    /// The request could not be read: its events are rejected with this.
    #[serde(default)]
    error: Option<String>,
}

fn to_wire(event: &WarehouseEvent) -> Option<WireEvent> {
    let command = match &event.command {
        EventCommand::Position(command) => match command {
            Command::Receipt { qty } => WireCommand::Receipt { qty: qty.get() },
            Command::Adjust { delta, reason } => WireCommand::Adjust {
                delta: *delta,
                reason: *reason,
            },
            Command::Count {
                counted,
                expected_version,
            } => WireCommand::Count {
                counted: *counted,
                expected_version: *expected_version,
            },
            Command::Return { qty, restockable } => WireCommand::Return {
                qty: qty.get(),
                restockable: *restockable,
            },
            Command::Quarantine { qty, action } => WireCommand::Quarantine {
                qty: qty.get(),
                action: *action,
            },
            Command::InTransit { delta } => WireCommand::InTransit { delta: *delta },
            _ => return None,
        },
        EventCommand::TransferOut {
            transfer_id,
            to,
            qty,
        } => WireCommand::TransferOut {
            transfer_id: transfer_id.clone(),
            to: to.clone(),
            qty: qty.get(),
        },
        EventCommand::TransferIn {
            transfer_id,
            from,
            qty,
        } => WireCommand::TransferIn {
            transfer_id: transfer_id.clone(),
            from: from.clone(),
            qty: qty.get(),
        },
    };
    Some(WireEvent {
        event_id: event.event_id.clone(),
        type_name: event.type_name.to_string(),
        source: event.source.clone(),
        occurred_at_ms: event.occurred_at_ms,
        sku: event.sku.clone(),
        location: event.location.clone(),
        command,
        payload: event.payload.clone(),
    })
}

fn from_wire(wire: WireEvent) -> Result<WarehouseEvent, String> {
    let type_name = EVENT_TYPES
        .iter()
        .find(|t| **t == wire.type_name)
        .copied()
        .ok_or_else(|| format!("unknown event type {}", wire.type_name))?;
    let qty = |qty: u64| Qty::new(qty).ok_or_else(|| format!("quantity {qty} out of range"));
    let command = match wire.command {
        WireCommand::Receipt { qty: q } => Command::Receipt { qty: qty(q)? }.into(),
        WireCommand::Adjust { delta, reason } => Command::Adjust { delta, reason }.into(),
        WireCommand::Count {
            counted,
            expected_version,
        } => Command::Count {
            counted,
            expected_version,
        }
        .into(),
        WireCommand::Return {
            qty: q,
            restockable,
        } => Command::Return {
            qty: qty(q)?,
            restockable,
        }
        .into(),
        WireCommand::Quarantine { qty: q, action } => Command::Quarantine {
            qty: qty(q)?,
            action,
        }
        .into(),
        WireCommand::InTransit { delta } => Command::InTransit { delta }.into(),
        WireCommand::TransferOut {
            transfer_id,
            to,
            qty: q,
        } => EventCommand::TransferOut {
            transfer_id,
            to,
            qty: qty(q)?,
        },
        WireCommand::TransferIn {
            transfer_id,
            from,
            qty: q,
        } => EventCommand::TransferIn {
            transfer_id,
            from,
            qty: qty(q)?,
        },
    };
    Ok(WarehouseEvent {
        event_id: wire.event_id,
        type_name,
        source: wire.source,
        occurred_at_ms: wire.occurred_at_ms,
        sku: wire.sku,
        location: wire.location,
        command,
        payload: wire.payload,
    })
}

fn outcome_to_wire(outcome: EventOutcome) -> WireOutcome {
    WireOutcome {
        event_id: outcome.event_id,
        status: match outcome.status {
            EventStatus::Applied => "applied",
            EventStatus::Duplicate => "duplicate",
            EventStatus::Rejected => "rejected",
        }
        .to_string(),
        seq: outcome.seq,
        code: outcome.code.map(str::to_owned),
        detail: outcome.detail,
    }
}

fn outcome_from_wire(wire: WireOutcome) -> EventOutcome {
    let status = match wire.status.as_str() {
        "applied" => EventStatus::Applied,
        "duplicate" => EventStatus::Duplicate,
        _ => EventStatus::Rejected,
    };
    // A code this build does not know is told as `unavailable`: retried.
    let code = wire
        .code
        .map(|code| Code::parse(&code).unwrap_or(Code::Unavailable).as_str());
    EventOutcome {
        event_id: wire.event_id,
        status,
        seq: wire.seq,
        code,
        detail: wire.detail,
    }
}

/// The subject group `stream`'s owner says on whether it holds its parts of
/// carts ([`Engine::cart_part_state`]).
pub fn parts_subject(stream: &str) -> String {
    format!("stockwire.{stream}.parts")
}

/// Cart parts on the wire (id, and the cart request's nonce as 32 hex
/// digits): whether this group holds its part of each.
#[derive(Debug, Serialize, Deserialize)]
struct PartsRequest {
    parts: Vec<(String, String)>,
}

/// One state per id asked, in order (`None`: not yet known, ask again).
#[derive(Debug, Serialize, Deserialize)]
struct PartsAnswer {
    states: Vec<Option<PartState>>,
}

/// What a request on one of this group's subjects is answered with.
type Answerer = fn(Arc<Engine>, async_nats::Message) -> BoxFuture<'static, Vec<u8>>;

/// Serves `stockwire.<own stream>.apply` (events) and `.parts` (cart parts),
/// a few requests at a time. Started once this process owns its group and
/// its engine recovered; a process that stops owning exits (cluster::step_down).
pub fn serve(link: Arc<Link>, config: &ClusterConfig, engine: Arc<Engine>) {
    let events: Answerer = |engine, message| {
        Box::pin(async move {
            let answer = answer(&engine, &message.payload).await;
            serde_json::to_vec(&answer).unwrap_or_default()
        })
    };
    let parts: Answerer = |engine, message| {
        Box::pin(async move {
            let states = match serde_json::from_slice::<PartsRequest>(&message.payload) {
                Ok(request) => {
                    let parts = request.parts.into_iter().take(PART_STATES_PER_REQUEST);
                    let asked = parts.map(|(id, nonce)| {
                        let engine = engine.clone();
                        async move {
                            let nonce = u128::from_str_radix(&nonce, 16).ok()?;
                            engine.cart_part_state(&id, nonce).await.ok()
                        }
                    });
                    futures_util::future::join_all(asked).await
                }
                Err(_) => Vec::new(),
            };
            serde_json::to_vec(&PartsAnswer { states }).unwrap_or_default()
        })
    };
    serve_subject(
        link.clone(),
        apply_subject(&config.own_stream()),
        engine.clone(),
        events,
    );
    serve_subject(link, parts_subject(&config.own_stream()), engine, parts);
}

/// Answers requests on `subject` with `answerer`, a few at a time.
fn serve_subject(link: Arc<Link>, subject: String, engine: Arc<Engine>, answerer: Answerer) {
    let for_task = link.clone();
    link.runtime().spawn(async move {
        let link = for_task;
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_REQUESTS));
        loop {
            let mut requests = match link.client.subscribe(subject.clone()).await {
                Ok(requests) => requests,
                Err(error) => {
                    tracing::warn!(%error, "group apply subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            while let Some(message) = requests.next().await {
                let Some(reply) = message.reply.clone() else {
                    continue;
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (engine, link) = (engine.clone(), link.clone());
                tokio::spawn(async move {
                    let body = answerer(engine, message).await;
                    let _ = link.client.publish(reply, body.into()).await;
                    drop(permit);
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// What one request's events did. An event the wire cannot carry is rejected,
/// and its position's later events are not tried (`None`), as a rejection
/// stops a position in the engine.
async fn answer(engine: &Engine, payload: &[u8]) -> ApplyAnswer {
    let request = match serde_json::from_slice::<ApplyRequest>(payload) {
        Ok(request) => request,
        Err(error) => {
            return ApplyAnswer {
                outcomes: Vec::new(),
                error: Some(format!(
                    "the partition group's owner could not read the events: {error}"
                )),
            }
        }
    };
    enum Slot {
        Refused(EventOutcome),
        Skipped,
        Apply,
    }
    let mut stopped: HashSet<(String, String)> = HashSet::new();
    let mut slots = Vec::with_capacity(request.events.len());
    let mut events = Vec::with_capacity(request.events.len());
    for wire in request.events {
        let position = (wire.sku.clone(), wire.location.clone());
        if stopped.contains(&position) {
            slots.push(Slot::Skipped);
            continue;
        }
        let event_id = wire.event_id.clone();
        match from_wire(wire) {
            Ok(event) => {
                events.push(event);
                slots.push(Slot::Apply);
            }
            Err(detail) => {
                stopped.insert(position);
                slots.push(Slot::Refused(EventOutcome::rejected(
                    event_id,
                    Code::BadRequest.as_str(),
                    detail,
                )));
            }
        }
    }
    let correlation: Arc<str> = Arc::from(request.correlation_id.as_str());
    let mut applied = engine
        .apply_local_events_in_order(&events, correlation)
        .await
        .into_iter();
    let outcomes = slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Refused(outcome) => Some(outcome_to_wire(outcome)),
            Slot::Skipped => None,
            Slot::Apply => applied.next().flatten().map(outcome_to_wire),
        })
        .collect();
    ApplyAnswer {
        outcomes,
        error: None,
    }
}

/// Sends events of other groups to their owners (set on the engine in cluster
/// mode with partition groups).
pub struct Remote {
    link: Arc<Link>,
    config: ClusterConfig,
}

impl Remote {
    pub fn new(link: Arc<Link>, config: ClusterConfig) -> Remote {
        Remote { link, config }
    }
}

impl RemoteApply for Remote {
    fn apply(
        &self,
        group: u32,
        events: Vec<WarehouseEvent>,
        correlation: Arc<str>,
    ) -> BoxFuture<'static, Vec<Option<EventOutcome>>> {
        let link = self.link.clone();
        let subject = apply_subject(&self.config.group_stream(group));
        let runtime = self.link.runtime().clone();
        Box::pin(async move {
            let count = events.len();
            let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
            let sent =
                runtime.spawn(async move { send(&link, subject, events, correlation).await });
            match sent.await {
                Ok(outcomes) => outcomes,
                Err(_) => ids
                    .into_iter()
                    .map(|id| Some(unavailable(id, "the group apply task failed")))
                    .take(count)
                    .collect(),
            }
        })
    }

    fn part_states(
        &self,
        group: u32,
        parts: Vec<(Arc<str>, u128)>,
    ) -> BoxFuture<'static, Option<Vec<Option<PartState>>>> {
        let link = self.link.clone();
        let subject = parts_subject(&self.config.group_stream(group));
        let runtime = self.link.runtime().clone();
        Box::pin(async move {
            let asked =
                runtime.spawn(async move { Remote::ask_parts(&link, subject, parts).await });
            asked.await.ok().flatten()
        })
    }
}

/// How long a group's owner has to say whether it holds cart parts: the
/// parts asking wait in the expiry loop (a hung owner slows its ticks to
/// this), and ask again a second later.
const PARTS_WAIT: Duration = Duration::from_millis(500);

impl Remote {
    async fn ask_parts(
        link: &Link,
        subject: String,
        parts: Vec<(Arc<str>, u128)>,
    ) -> Option<Vec<Option<PartState>>> {
        let request = PartsRequest {
            parts: parts
                .iter()
                .map(|(id, nonce)| (id.to_string(), format!("{nonce:032x}")))
                .collect(),
        };
        let body = serde_json::to_vec(&request).ok()?;
        let message = tokio::time::timeout(PARTS_WAIT, link.client.request(subject, body.into()))
            .await
            .ok()?
            .ok()?;
        // One state per part, in order: the engine checks the count.
        let answer: PartsAnswer = serde_json::from_slice(&message.payload).ok()?;
        Some(answer.states)
    }
}

fn unavailable(event_id: String, detail: &str) -> EventOutcome {
    EventOutcome::rejected(event_id, Code::Unavailable.as_str(), detail.to_string())
}

/// Sends `events` in requests of at most the link's part size, in order. A
/// position stopped in one request (rejected, or not tried) is not continued in
/// a later one.
async fn send(
    link: &Link,
    subject: String,
    events: Vec<WarehouseEvent>,
    correlation: Arc<str>,
) -> Vec<Option<EventOutcome>> {
    let mut outcomes: Vec<Option<EventOutcome>> = Vec::with_capacity(events.len());
    let mut stopped: HashSet<(String, String)> = HashSet::new();
    let mut index = 0;
    while index < events.len() {
        // One request: events while they fit (at least one).
        let mut batch = Vec::new();
        let mut batch_at = Vec::new();
        let mut bytes = 64;
        while index < events.len() {
            let event = &events[index];
            if stopped.contains(&(event.sku.clone(), event.location.clone())) {
                if batch.is_empty() {
                    outcomes.push(None);
                    index += 1;
                    continue;
                }
                break;
            }
            let Some(wire) = to_wire(event) else {
                outcomes.push(Some(EventOutcome::rejected(
                    event.event_id.clone(),
                    Code::BadRequest.as_str(),
                    "not a warehouse event".to_string(),
                )));
                index += 1;
                continue;
            };
            let size = serde_json::to_vec(&wire).map_or(0, |v| v.len()) + 1;
            if !batch.is_empty() && bytes + size > link.part_bytes {
                break;
            }
            bytes += size;
            batch.push(wire);
            batch_at.push(index);
            index += 1;
        }
        if batch.is_empty() {
            continue;
        }
        let request = ApplyRequest {
            correlation_id: correlation.to_string(),
            events: batch,
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let answered = tokio::time::timeout(
            ANSWER_WAIT,
            link.client.request(subject.clone(), body.into()),
        )
        .await;
        let answer = match answered {
            Ok(Ok(message)) => serde_json::from_slice::<ApplyAnswer>(&message.payload).ok(),
            _ => None,
        };
        if let Some(error) = answer.as_ref().and_then(|a| a.error.clone()) {
            // Not retried: the owner cannot read what this build sends.
            for at in &batch_at {
                let event = &events[*at];
                stopped.insert((event.sku.clone(), event.location.clone()));
                outcomes.push(Some(EventOutcome::rejected(
                    events[*at].event_id.clone(),
                    Code::BadRequest.as_str(),
                    error.clone(),
                )));
            }
            continue;
        }
        let answer = answer.filter(|a| a.outcomes.len() == batch_at.len());
        match answer {
            Some(answer) => {
                for (at, outcome) in batch_at.iter().zip(answer.outcomes) {
                    // Another group's journal sequence means nothing next to
                    // this group's (an inbox file's first and last seq).
                    let outcome = outcome.map(outcome_from_wire).map(|mut outcome| {
                        outcome.seq = None;
                        outcome
                    });
                    if outcome
                        .as_ref()
                        .is_none_or(|o| o.status == EventStatus::Rejected)
                    {
                        let event = &events[*at];
                        stopped.insert((event.sku.clone(), event.location.clone()));
                    }
                    outcomes.push(outcome);
                }
            }
            None => {
                // Not answered: everything from here is retried later.
                let detail = "the partition group's owner did not answer";
                for event in &events[batch_at[0]..] {
                    outcomes.push(Some(unavailable(event.event_id.clone(), detail)));
                }
                return outcomes;
            }
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event command survives the wire.
    #[test]
    fn events_cross_the_wire_unchanged() {
        let qty = Qty::new(3).unwrap();
        let commands: Vec<EventCommand> = vec![
            Command::Receipt { qty }.into(),
            Command::Adjust {
                delta: -2,
                reason: AdjustReason::Damage,
            }
            .into(),
            Command::Count {
                counted: 7,
                expected_version: Some(4),
            }
            .into(),
            Command::Return {
                qty,
                restockable: true,
            }
            .into(),
            Command::Quarantine {
                qty,
                action: QuarantineAction::Release,
            }
            .into(),
            Command::InTransit { delta: 5 }.into(),
            EventCommand::TransferOut {
                transfer_id: "t1".into(),
                to: "wh-b".into(),
                qty,
            },
            EventCommand::TransferIn {
                transfer_id: "t1".into(),
                from: "wh-a".into(),
                qty,
            },
        ];
        for command in commands {
            let event = WarehouseEvent {
                event_id: "e1".into(),
                type_name: "receipt",
                source: "3pl".into(),
                occurred_at_ms: Some(12),
                sku: "s".into(),
                location: "wh-a".into(),
                command,
                payload: "{\"row\":1}".into(),
            };
            let wire = serde_json::to_vec(&to_wire(&event).expect("an event")).unwrap();
            let back = from_wire(serde_json::from_slice(&wire).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{event:?}"));
            assert_eq!(back.content_fingerprint(), event.content_fingerprint());
        }
    }
}
