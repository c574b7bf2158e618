//! A seeded simulation of the engine on simulated time: random sequences of
//! receipts, reservations (located and sourced, one and several lines,
//! bursts racing for one SKU), releases, allocations, shipments, clock
//! jumps with expiry, passivation, snapshots, crashes (the engine dropped
//! and recovered from what the store holds) and storage faults (writes
//! failing now, or after a few more succeed), checked against a model of
//! what was acknowledged.
//!
//! What it holds the engine to:
//! - nothing acknowledged is lost and nothing refused appears: after every
//!   recovery each position's counters and each reservation's status are what
//!   the acknowledged operations made them;
//! - an operation that failed on a fault took effect wholly or not at all
//!   (the model reads which, then checks the positions agree);
//! - no position is ever oversold, and a located hold is refused only when
//!   the model says the units are not there;
//! - a held reservation expires exactly when the clock passes its deadline.
//!
//! The seed is printed first; rerun one with `STOCKWIRE_SIM_SEED=<seed>`, or
//! more seeds with `STOCKWIRE_SIM_SEEDS=<count>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::clock::Clock;
use crate::domain::reservation::{Plan, ReservationStatus, Transition};
use crate::domain::Qty;
use crate::storage::MemoryStore;

// One shard: every append goes through one thread's journal ticks, so which write a
// `fail_after(k)` fault hits is the same on every run of a seed.
const CONFIG: &str = r#"
shards = 1
passivate_after_seconds = 5
[[locations]]
id = "east"
kind = "warehouse"
[[locations]]
id = "west"
kind = "warehouse"
[[channels]]
id = "web"
locations = ["east", "west"]
"#;

const LOCATIONS: [&str; 2] = ["east", "west"];
const SKUS: usize = 4;
const STEPS: usize = 400;
/// Seeds run by default (each a few hundred steps, well under a second).
const SEEDS: u64 = 12;
const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Expected {
    on_hand: u64,
    reserved: u64,
    allocated: u64,
}

#[derive(Debug, Clone)]
struct Reservation {
    status: ReservationStatus,
    /// `(sku, location, qty)` as the engine placed them.
    lines: Vec<(String, String, u64)>,
    expires_at_ms: i64,
}

/// What the acknowledged operations add up to.
#[derive(Default)]
struct Model {
    received: BTreeMap<(String, String), u64>,
    shipped: BTreeMap<(String, String), u64>,
    reservations: BTreeMap<String, Reservation>,
}

impl Model {
    fn expected(&self) -> BTreeMap<(String, String), Expected> {
        let mut out: BTreeMap<(String, String), Expected> = BTreeMap::new();
        for (key, units) in &self.received {
            out.entry(key.clone()).or_default().on_hand += units;
        }
        for (key, units) in &self.shipped {
            let entry = out.entry(key.clone()).or_default();
            entry.on_hand = entry
                .on_hand
                .checked_sub(*units)
                .expect("shipped what was there");
        }
        for reservation in self.reservations.values() {
            for (sku, location, qty) in &reservation.lines {
                let entry = out.entry((sku.clone(), location.clone())).or_default();
                match reservation.status {
                    ReservationStatus::Held => entry.reserved += qty,
                    ReservationStatus::Allocated => entry.allocated += qty,
                    _ => {}
                }
            }
        }
        out
    }

    fn available(&self, sku: &str, location: &str) -> i64 {
        let expected = self.expected();
        let e = expected
            .get(&(sku.to_string(), location.to_string()))
            .cloned()
            .unwrap_or_default();
        e.on_hand as i64 - e.reserved as i64 - e.allocated as i64
    }

    fn ship(&mut self, id: &str) {
        let reservation = self.reservations.get_mut(id).expect("known");
        reservation.status = ReservationStatus::Shipped;
        for (sku, location, qty) in &reservation.lines {
            *self
                .shipped
                .entry((sku.clone(), location.clone()))
                .or_default() += qty;
        }
    }

    /// Records that `id` is now in `status` (the shipment's units leave on hand).
    fn set(&mut self, id: &str, status: ReservationStatus) {
        if status == ReservationStatus::Shipped {
            self.ship(id);
        } else {
            self.reservations.get_mut(id).expect("known").status = status;
        }
    }
}

struct Sim {
    seed: u64,
    rng: StdRng,
    clock: Clock,
    store: Arc<MemoryStore>,
    engine: Arc<Engine>,
    model: Model,
    next_id: u64,
    /// Operations that failed on a fault: `(reservation id, status before, status after success)`.
    uncertain: Vec<(String, Option<ReservationStatus>, ReservationStatus)>,
    /// Receipts that failed on a fault, retried after recovery.
    unsure_receipts: Vec<WarehouseEvent>,
    crashes: u32,
    faults: u32,
}

async fn start(store: &Arc<MemoryStore>, clock: &Clock) -> Arc<Engine> {
    let config = Arc::new(Config::from_toml_str(CONFIG, "sim", &[]).expect("valid config"));
    let recovered = recover(&**store).expect("recovers");
    let metrics = Arc::new(Metrics::new());
    let engine =
        Engine::start_with_clock(config, store.clone(), recovered, metrics, clock.clone()).await;
    engine.finish_recovery().await;
    engine
}

fn receipt(event_id: String, sku: &str, location: &str, qty: u64) -> WarehouseEvent {
    WarehouseEvent {
        event_id,
        type_name: "receipt",
        source: "sim".to_string(),
        occurred_at_ms: None,
        sku: sku.to_string(),
        location: location.to_string(),
        command: Command::Receipt {
            qty: Qty::new(qty).expect("in range"),
        }
        .into(),
        payload: String::new(),
    }
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let clock = Clock::manual(T0);
        let store = Arc::new(MemoryStore::new());
        let engine = start(&store, &clock).await;
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            clock,
            store,
            engine,
            model: Model::default(),
            next_id: 0,
            uncertain: Vec::new(),
            unsure_receipts: Vec::new(),
            crashes: 0,
            faults: 0,
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    fn sku(&mut self) -> String {
        format!("sku-{}", self.rng.gen_range(0..SKUS))
    }

    fn location(&mut self) -> &'static str {
        LOCATIONS[self.rng.gen_range(0..LOCATIONS.len())]
    }

    async fn step(&mut self, step: usize) {
        let faulty = self.rng.gen_ratio(1, 25);
        if faulty {
            self.faults += 1;
            if self.rng.gen_bool(0.5) {
                self.store.set_failing(true);
            } else {
                self.store.fail_after(self.rng.gen_range(0..3));
            }
        }
        match self.rng.gen_range(0..100) {
            0..=19 => self.receive(faulty).await,
            20..=49 => self.reserve(faulty).await,
            50..=54 => self.burst(faulty).await,
            55..=64 => self.change(Transition::Release, faulty).await,
            65..=74 => self.change(Transition::Allocate, faulty).await,
            75..=82 => self.change(Transition::Ship, faulty).await,
            83..=90 => self.advance().await,
            91..=93 => {
                self.engine.passivate_idle().await;
            }
            94..=96 => {
                let taken = self.engine.snapshot().await;
                assert!(
                    taken.is_ok() || faulty,
                    "seed {}: snapshot {taken:?}",
                    self.seed
                );
            }
            _ => self.crash().await,
        }
        if faulty {
            self.store.set_failing(false);
            // Fail-stop: a journal that failed takes the engine down; what
            // is durable is all a restart sees.
            self.crash().await;
        }
        if step.is_multiple_of(20) {
            self.check_live().await;
        }
    }

    /// A refusal for want of storage: only where a fault was injected.
    fn unavailable(&self, faulty: bool, what: &str) {
        assert!(
            faulty,
            "seed {}: {what} refused as unavailable without a fault",
            self.seed
        );
    }

    async fn receive(&mut self, faulty: bool) {
        let (sku, location) = (self.sku(), self.location());
        let qty = self.rng.gen_range(1..=5);
        let event = receipt(self.id("receipt"), &sku, location, qty);
        let outcome = self
            .engine
            .apply_events(vec![event.clone()], Arc::from("sim"))
            .await;
        match outcome[0].status {
            EventStatus::Applied => {
                *self
                    .model
                    .received
                    .entry((sku, location.to_string()))
                    .or_default() += qty;
            }
            EventStatus::Duplicate => panic!("seed {}: a new event id is a duplicate", self.seed),
            EventStatus::Rejected => {
                self.unavailable(faulty, &format!("receipt {:?}", outcome[0].code));
                self.unsure_receipts.push(event);
            }
        }
    }

    fn new_reservation(&mut self, lines: Vec<LineRequest>) -> NewReservation {
        NewReservation {
            reservation_id: Some(self.id("res")),
            channel: "web".to_string(),
            order_ref: None,
            ttl_seconds: Some(self.rng.gen_range(1..=60)),
            lines,
            split: false,
            correlation_id: Arc::from("sim"),
            idempotency_key: None,
            remember: None,
            lease_seconds: None,
            siblings: Vec::new(),
            cart_nonce: 0,
        }
    }

    async fn reserve(&mut self, faulty: bool) {
        let count = if self.rng.gen_ratio(1, 3) { 2 } else { 1 };
        let first = self.rng.gen_range(0..SKUS);
        let mut lines = Vec::new();
        for n in 0..count {
            let sku = format!("sku-{}", (first + n) % SKUS);
            let location = if self.rng.gen_bool(0.7) {
                Some(self.location().to_string())
            } else {
                None
            };
            lines.push(LineRequest {
                sku,
                location,
                qty: Qty::new(self.rng.gen_range(1..=4)).expect("in range"),
            });
        }
        let request = self.new_reservation(lines.clone());
        let id = request.reservation_id.clone().expect("id");
        let deadline = self.clock.now_ms() + request.ttl_seconds.unwrap_or(0) as i64 * 1000;
        match self.engine.create_reservation(request).await {
            Ok((view, created)) => {
                assert!(created, "seed {}: a new id is created", self.seed);
                self.accept(view, deadline);
            }
            Err(EngineError::Insufficient(_) | EngineError::UnknownSku(_)) => {
                // Refused: a located line asked for more than was there, or
                // a sourced line found no one location with all of it.
                let short = lines.iter().any(|line| match &line.location {
                    Some(location) => {
                        self.model.available(&line.sku, location) < line.qty.get() as i64
                    }
                    None => LOCATIONS
                        .iter()
                        .all(|l| self.model.available(&line.sku, l) < line.qty.get() as i64),
                });
                assert!(
                    short,
                    "seed {}: {id} refused while the stock was there",
                    self.seed
                );
            }
            Err(EngineError::Unavailable(_)) => {
                self.unavailable(faulty, &id);
                self.uncertain.push((id, None, ReservationStatus::Held));
            }
            Err(error) => panic!("seed {}: create {id}: {error:?}", self.seed),
        }
    }

    fn accept(&mut self, view: ReservationView, deadline: i64) {
        let record = view.record;
        assert_eq!(record.status, ReservationStatus::Held);
        assert_eq!(record.expires_at_ms, Some(deadline), "seed {}", self.seed);
        let lines: Vec<_> = record
            .lines
            .iter()
            .map(|l| (l.sku.clone(), l.location.clone(), l.qty))
            .collect();
        self.model.reservations.insert(
            record.id.clone(),
            Reservation {
                status: ReservationStatus::Held,
                lines,
                expires_at_ms: deadline,
            },
        );
    }

    /// Several one-line reservations racing for one SKU-location.
    async fn burst(&mut self, faulty: bool) {
        let (sku, location) = (self.sku(), self.location());
        let requests: Vec<NewReservation> = (0..self.rng.gen_range(2..=6))
            .map(|_| {
                self.new_reservation(vec![LineRequest {
                    sku: sku.clone(),
                    location: Some(location.to_string()),
                    qty: Qty::new(1).expect("in range"),
                }])
            })
            .collect();
        let ids: Vec<String> = requests
            .iter()
            .map(|r| r.reservation_id.clone().expect("id"))
            .collect();
        let deadlines: Vec<i64> = requests
            .iter()
            .map(|r| self.clock.now_ms() + r.ttl_seconds.unwrap_or(0) as i64 * 1000)
            .collect();
        let available = self.model.available(&sku, location);
        let results = futures_util::future::join_all(
            requests
                .into_iter()
                .map(|r| self.engine.create_reservation(r)),
        )
        .await;
        let mut held: i64 = 0;
        let mut refused: i64 = 0;
        for ((id, deadline), result) in ids.into_iter().zip(deadlines).zip(results) {
            match result {
                Ok((view, _)) => {
                    held += 1;
                    self.accept(view, deadline);
                }
                Err(EngineError::Insufficient(_) | EngineError::UnknownSku(_)) => refused += 1,
                Err(EngineError::Unavailable(_)) => {
                    self.unavailable(faulty, &id);
                    self.uncertain.push((id, None, ReservationStatus::Held));
                }
                Err(error) => panic!("seed {}: burst {id}: {error:?}", self.seed),
            }
        }
        // Exactly the units that were there are held, unless a fault cut in.
        if !faulty {
            assert_eq!(
                held,
                available.clamp(0, held + refused),
                "seed {}: burst on {sku}@{location}: {held} held, {refused} refused, {available} available",
                self.seed
            );
        }
    }

    async fn change(&mut self, transition: Transition, faulty: bool) {
        let open: Vec<String> = self
            .model
            .reservations
            .iter()
            .filter(|(_, r)| r.status.is_open() || self.rng.gen_ratio(1, 10))
            .map(|(id, _)| id.clone())
            .collect();
        if open.is_empty() {
            return;
        }
        let id = open[self.rng.gen_range(0..open.len())].clone();
        let before = self.model.reservations[&id].status;
        let answer = match transition {
            Transition::Release => self.engine.release_reservation(&id, "sim").await,
            Transition::Allocate => self.engine.allocate_reservation(&id, "sim").await,
            Transition::Ship => self.engine.ship_reservation(&id, None, "sim").await,
            Transition::Expire => unreachable!("the clock expires"),
        };
        let planned = crate::domain::reservation::plan(before, transition);
        match (answer, planned) {
            (Ok(view), Ok(plan)) => {
                let after = match plan {
                    Plan::Unchanged => before,
                    Plan::Change { to, .. } => to,
                };
                assert_eq!(view.record.status, after, "seed {}: {id}", self.seed);
                if after != before {
                    self.model.set(&id, after);
                }
            }
            (Err(EngineError::InvalidState(_)), Err(_)) => {}
            (Err(EngineError::Unavailable(_)), Ok(Plan::Change { to, .. })) => {
                self.unavailable(faulty, &id);
                self.uncertain.push((id, Some(before), to));
            }
            (answer, planned) => panic!(
                "seed {}: {transition:?} of {id} ({before:?}): {answer:?}, planned {planned:?}",
                self.seed
            ),
        }
    }

    /// Moves the clock and runs expiry, as the expiry loop would.
    async fn advance(&mut self) {
        let now = self.clock.advance(self.rng.gen_range(1..=20_000));
        self.engine.expire_due().await;
        let due: Vec<String> = self
            .model
            .reservations
            .iter()
            .filter(|(_, r)| r.status == ReservationStatus::Held && r.expires_at_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.model.set(&id, ReservationStatus::Expired);
        }
    }

    async fn crash(&mut self) {
        self.crashes += 1;
        self.engine.stop(false).await;
        self.engine = start(&self.store, &self.clock).await;
        // What failed on a fault: took effect wholly, or not at all.
        for (id, before, after) in std::mem::take(&mut self.uncertain) {
            let found = match self.engine.get_reservation(&id).await {
                Ok(view) => Some(view.record.status),
                Err(EngineError::NotFound(_)) => None,
                Err(error) => panic!("seed {}: read {id}: {error:?}", self.seed),
            };
            if found == before {
                continue;
            }
            assert_eq!(found, Some(after), "seed {}: {id} half done", self.seed);
            match before {
                None => {
                    let view = self.engine.get_reservation(&id).await.expect("found");
                    let deadline = view.record.expires_at_ms.expect("held");
                    self.accept(view, deadline);
                }
                Some(_) => self.model.set(&id, after),
            }
        }
        // A receipt that failed is sent again, as its system of record would.
        for event in std::mem::take(&mut self.unsure_receipts) {
            let outcome = self
                .engine
                .apply_events(vec![event.clone()], Arc::from("sim"))
                .await;
            assert!(
                matches!(
                    outcome[0].status,
                    EventStatus::Applied | EventStatus::Duplicate
                ),
                "seed {}: retried receipt {outcome:?}",
                self.seed
            );
            let Command::Receipt { qty } = event.command.position().expect("a receipt").clone()
            else {
                unreachable!("receipts only")
            };
            *self
                .model
                .received
                .entry((event.sku.clone(), event.location.clone()))
                .or_default() += qty.get();
        }
        // Expiry deadlines that passed while down fire on the next tick.
        self.engine.expire_due().await;
        let now = self.clock.now_ms();
        for reservation in self.model.reservations.values_mut() {
            if reservation.status == ReservationStatus::Held && reservation.expires_at_ms <= now {
                reservation.status = ReservationStatus::Expired;
            }
        }
        self.check_all().await;
    }

    /// Every position is what the model says (one the model has and the engine
    /// does not counts as all zeros, so a lost position fails), and none is oversold.
    async fn check_live(&self) {
        let mut expected = self.model.expected();
        for n in 0..SKUS {
            let sku = format!("sku-{n}");
            for readout in self.engine.read_sku(&sku, None, None).await.expect("read") {
                let key = (sku.clone(), readout.location.to_string());
                let want = expected.remove(&key).unwrap_or_default();
                let c = readout.counters;
                let got = Expected {
                    on_hand: c.on_hand,
                    reserved: c.reserved,
                    allocated: c.allocated,
                };
                assert_eq!(got, want, "seed {}: {key:?}", self.seed);
                assert!(
                    readout.available() >= 0,
                    "seed {}: {key:?} oversold",
                    self.seed
                );
            }
        }
        for (key, want) in expected {
            assert_eq!(
                want,
                Expected::default(),
                "seed {}: {key:?} is missing",
                self.seed
            );
        }
    }

    /// [`Sim::check_live`], and every reservation's status.
    async fn check_all(&self) {
        self.check_live().await;
        for (id, reservation) in &self.model.reservations {
            let view = self.engine.get_reservation(id).await;
            let status = view.map(|v| v.record.status);
            assert_eq!(
                status.ok(),
                Some(reservation.status),
                "seed {}: reservation {id}",
                self.seed
            );
        }
    }
}

async fn run(seed: u64) {
    println!("simulation seed {seed} (rerun: STOCKWIRE_SIM_SEED={seed})");
    let mut sim = Sim::new(seed).await;
    for step in 0..STEPS {
        sim.step(step).await;
    }
    sim.crash().await;
    println!(
        "seed {seed}: {} reservations, {} crashes, {} faults",
        sim.model.reservations.len(),
        sim.crashes,
        sim.faults
    );
    sim.engine.stop(false).await;
}

#[actix::test]
async fn random_operations_with_crashes_and_storage_faults_keep_what_was_acknowledged() {
    let seeds: Vec<u64> = match std::env::var("STOCKWIRE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("STOCKWIRE_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("STOCKWIRE_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(SEEDS);
            (1..=count).collect()
        }
    };
    for seed in seeds {
        run(seed).await;
    }
}
