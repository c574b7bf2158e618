//! A cart's parts over partition groups (docs/CLUSTER.md, "Carts over several
//! groups"). Each part is held on a lease shorter than the cart's TTL and
//! knows its sibling groups and its cart request's number ([`CartPart`]). At
//! the lease's end the part asks each sibling's owner whether it holds its
//! part of the cart (same id, same number, or one kept already):
//!
//! - every sibling holds it (held, allocated or shipped): the part keeps its
//!   stock to the cart's deadline (journaled);
//! - a sibling let go of its part, never had it, or has something else under
//!   the id: the part lets go too;
//! - a sibling did not answer: asked again a second later, until the cart's
//!   own deadline, when the part expires as any hold does.
//!
//! A sibling that does not have the part answers for good: it takes the id
//! with a closed record of no lines, journaled, before it answers. A part
//! that arrives after that is refused (`409`, "was let go"), so the cart it
//! belongs to is never answered held. That is what makes the answer safe
//! without clocks: "not here" can never turn into "here" later.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError};
use crate::storage::records::{
    CartPart, CartStage, PendingOp, ReservationRecord, ReservationStatus,
};

/// Ids asked of one sibling group in one request.
pub const PART_STATES_PER_REQUEST: usize = 500;

/// How soon a part whose siblings did not all answer asks again.
const ASK_AGAIN_MS: i64 = 1000;

/// Parts kept in one journal write (each a reservation record).
const KEPT_PER_WRITE: usize = 500;

/// Parts let go at once (each an expiry on its positions).
const LET_GO_IN_FLIGHT_MAX: usize = 64;

/// A sibling group's answer for its part of a cart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartState {
    /// Held, allocated or shipped.
    Holding,
    /// Released or expired, or never here (and now never will be).
    Gone,
}

/// The correlation id of the records and journal entries this module makes.
const SETTLE: &str = "cart-settle";

/// Whether `record` only takes its id: made by [`Engine::cart_part_state`]
/// where a cart's part was never held (no lines, no request). To clients,
/// not found; to a part created with its id, refused.
pub(super) fn is_taken_id(record: &ReservationRecord) -> bool {
    record.lines.is_empty() && record.request_hash.is_empty()
}

impl Engine {
    /// The sibling groups of `id` (and its cart's nonce) if it is a cart's
    /// part whose lease has run out and whose siblings must be asked; `None`
    /// for any other reservation.
    /// `Err` when its record is busy with another change: looked at again on
    /// the next tick (the expiry loop does not wait on one record).
    pub(super) fn cart_part_due(&self, id: &Arc<str>) -> Result<Option<(Vec<u32>, u128)>, ()> {
        let Some(cell) = self.reservations.get(id) else {
            return Ok(None);
        };
        let Ok(record) = cell.try_lock() else {
            let next_tick = super::maintenance::EXPIRY_TICK_MS as i64;
            self.expiry.schedule(self.now_ms() + next_tick, id.clone());
            return Err(());
        };
        let due = record.status == ReservationStatus::Held
            && record.pending.is_none()
            && record.expires_at_ms.is_some_and(|at| at <= self.now_ms());
        Ok(match &record.cart {
            Some(cart) if due && cart.stage == CartStage::Lease => {
                Some((cart.siblings.clone(), cart.nonce))
            }
            _ => None,
        })
    }

    /// Settles cart parts whose leases ran out: their siblings asked, one
    /// request per sibling group, and each part kept, let go or asked again.
    pub(super) async fn settle_cart_parts(&self, parts: Vec<(Arc<str>, Vec<u32>, u128)>) {
        let mut asked: BTreeMap<u32, Vec<(Arc<str>, u128)>> = BTreeMap::new();
        for (id, siblings, nonce) in &parts {
            for group in siblings {
                asked.entry(*group).or_default().push((id.clone(), *nonce));
            }
        }
        let mut answers: BTreeMap<(u32, Arc<str>), PartState> = BTreeMap::new();
        if let Some(remote) = self.remote.get() {
            let requests = asked.iter().flat_map(|(group, ids)| {
                ids.chunks(PART_STATES_PER_REQUEST).map(|chunk| {
                    let (group, chunk) = (*group, chunk.to_vec());
                    let asking = remote.part_states(group, chunk.clone());
                    async move { (group, chunk, asking.await) }
                })
            });
            for (group, ids, states) in futures_util::future::join_all(requests).await {
                let Some(states) = states.filter(|states| states.len() == ids.len()) else {
                    continue;
                };
                for ((id, _), state) in ids.into_iter().zip(states) {
                    if let Some(state) = state {
                        answers.insert((group, id), state);
                    }
                }
            }
        }
        let mut keep = Vec::new();
        let mut let_go = Vec::new();
        for (id, siblings, _) in parts {
            let states: Vec<Option<PartState>> = siblings
                .iter()
                .map(|group| answers.get(&(*group, id.clone())).copied())
                .collect();
            if states.contains(&Some(PartState::Gone)) {
                let_go.push(id);
            } else if states.iter().all(|s| *s == Some(PartState::Holding)) {
                keep.push(id);
            } else {
                self.ask_again(id).await;
            }
        }
        for chunk in keep.chunks(KEPT_PER_WRITE) {
            self.keep_cart_parts(chunk).await;
        }
        futures_util::stream::iter(let_go)
            .for_each_concurrent(LET_GO_IN_FLIGHT_MAX, |id| async move {
                self.let_go_cart_part(id).await
            })
            .await;
    }

    /// Lets `id` go as any hold is at its deadline: no longer a part waiting
    /// to settle, then expired.
    async fn let_go_cart_part(&self, id: Arc<str>) {
        if let Some(cell) = self.reservations.get(&id) {
            if let Some(cart) = &mut cell.lock().await.cart {
                cart.stage = CartStage::LettingGo;
            }
        }
        match self.expire_reservation(&id).await {
            Ok(()) => tracing::info!(reservation = %id,
                "cart part let go: not every sibling group holds its part"),
            Err(error) => {
                // Its deadline has passed and it waits to settle no more: the
                // expiry loop tries again as for any hold.
                tracing::warn!(reservation = %id, %error, "a cart part was not let go; trying again");
                self.expiry.schedule(self.now_ms() + ASK_AGAIN_MS, id);
            }
        }
    }

    /// A part whose siblings did not all answer: asked again a second later,
    /// or, past the cart's own deadline, let go as any hold is at its deadline.
    async fn ask_again(&self, id: Arc<str>) {
        let past = match self.reservations.get(&id) {
            Some(cell) => cell
                .lock()
                .await
                .cart
                .as_ref()
                .is_some_and(|cart| self.now_ms() >= cart.expires_at_ms),
            None => return,
        };
        if past {
            self.let_go_cart_part(id).await;
        } else {
            self.expiry.schedule(self.now_ms() + ASK_AGAIN_MS, id);
        }
    }

    /// Keeps `ids` (every sibling holds its part) to their carts' deadlines,
    /// in one journal write. A part busy with another change is asked about
    /// again on the next tick.
    async fn keep_cart_parts(&self, ids: &[Arc<str>]) {
        let now = self.now_ms();
        let mut batch = crate::storage::WriteBatch::default();
        let mut kept = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(cell) = self.reservations.get(id) else {
                continue;
            };
            let Ok(record) = cell.try_lock_owned() else {
                self.expiry.schedule(now, id.clone());
                continue;
            };
            let Some(cart) = record.cart.clone() else {
                continue;
            };
            if record.status != ReservationStatus::Held || cart.stage != CartStage::Lease {
                continue;
            }
            if record.pending.is_some() {
                // An unfinished change, finished by its retry or recovery.
                self.expiry.schedule(now + ASK_AGAIN_MS, id.clone());
                continue;
            }
            let mut settled = record.clone();
            settled.cart = Some(CartPart {
                stage: CartStage::Kept,
                ..cart.clone()
            });
            settled.expires_at_ms = Some(cart.expires_at_ms);
            settled.updated_at_ms = now;
            match super::reservations::record_batch(&settled) {
                Ok(record) => batch.append(record),
                Err(error) => {
                    tracing::warn!(reservation = %id, %error, "a cart part could not be encoded");
                    self.expiry.schedule(now + ASK_AGAIN_MS, id.clone());
                    continue;
                }
            }
            kept.push((record, settled));
        }
        if kept.is_empty() {
            return;
        }
        match self.write(batch).await {
            Ok(()) => {
                for (mut record, settled) in kept {
                    self.schedule_expiry(&settled);
                    *record = settled;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cart parts were not kept; asking again");
                for (record, _) in kept {
                    self.expiry
                        .schedule(now + ASK_AGAIN_MS, Arc::from(record.id.as_str()));
                }
            }
        }
    }

    /// A sibling's question at its lease's end: does this group hold its part
    /// of cart `id`, the one request `nonce` made? [`PartState::Holding`] for a
    /// part of that request, or one kept (its siblings held, or its cart's
    /// coordinator confirmed it), held, allocated or shipped.
    /// [`PartState::Gone`] for one released, expired or letting go, and for a
    /// record under the id that is not that cart's part (another request's,
    /// a reservation of one group). Not here: the id is taken by a closed
    /// record of no lines, journaled before the answer, so a part that comes
    /// later is refused; [`PartState::Gone`]. A creation under way:
    /// `unavailable` (asked again).
    pub async fn cart_part_state(&self, id: &str, nonce: u128) -> Result<PartState, EngineError> {
        let now = self.now_ms();
        let closed = ReservationRecord {
            id: id.to_string(),
            channel: String::new(),
            order_ref: None,
            status: ReservationStatus::Expired,
            lines: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: None,
            correlation_id: SETTLE.to_string(),
            // No request's hash: a part created later is another content.
            request_hash: Vec::new(),
            pending: None,
            cart: None,
        };
        let key: Arc<str> = Arc::from(id);
        let cell = Arc::new(tokio::sync::Mutex::new(closed.clone()));
        let mut guard = cell.clone().lock_owned().await;
        match self.reservations.claim(&key, &cell) {
            Ok(()) => {
                let written = match super::reservations::record_batch(&closed) {
                    Ok(batch) => self.write(batch).await,
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = written {
                    // Not taken after all: a creation waiting on the id tries again.
                    guard.pending = Some(PendingOp::Create);
                    self.reservations.remove(id);
                    return Err(error);
                }
                Ok(PartState::Gone)
            }
            Err(existing) => {
                drop(guard);
                let record = existing.lock().await;
                if record.pending == Some(PendingOp::Create) {
                    return Err(EngineError::Unavailable(format!(
                        "reservation {id} is being created"
                    )));
                }
                let letting_go =
                    matches!(record.pending, Some(PendingOp::Release | PendingOp::Expire))
                        || matches!(
                            record.status,
                            ReservationStatus::Released | ReservationStatus::Expired
                        );
                let this_cart = record.cart.as_ref().is_some_and(|cart| match cart.stage {
                    CartStage::Kept => true,
                    CartStage::Lease => cart.nonce == nonce,
                    CartStage::LettingGo => false,
                });
                Ok(if this_cart && !letting_go {
                    PartState::Holding
                } else {
                    PartState::Gone
                })
            }
        }
    }
}
