//! The ledger: what the harness knows happened to every reading, kept outside
//! the system under test.
//!
//! In the simulator the ledger observes the gateways directly (it implements
//! [`GatewayObserver`] per gateway) and is told about crashes and spool
//! damage by the runner. In the real world it is built from the gateways'
//! JSON-lines ledger files, which list durable readings only.

use soilstream::gateway::observer::GatewayObserver;
use soilstream::metrics::RejectReason;
use soilstream::model::{Reading, ReadingId};
use soilstream::transport::RecordPosition;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// What became of a reading, as far as the gateway told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// Sampled, not (yet) acknowledged durable.
    Sampled,
    /// Acknowledged durable by the spool.
    Durable,
    /// Not spooled, for this reason (counted, allowed).
    Rejected(RejectReasonKey),
    /// Sampled and not durable when its gateway lost power or crashed.
    LostBeforeDurable,
}

/// A sortable copy of [`RejectReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReasonKey {
    /// Spool full.
    SpoolFull,
    /// Failed validation.
    Invalid,
    /// Disk error.
    Io,
}

impl From<RejectReason> for RejectReasonKey {
    fn from(r: RejectReason) -> Self {
        match r {
            RejectReason::SpoolFull => RejectReasonKey::SpoolFull,
            RejectReason::Invalid => RejectReasonKey::Invalid,
            RejectReason::Io => RejectReasonKey::Io,
        }
    }
}

/// One reading's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The reading as sampled.
    pub reading: Reading,
    /// What became of it.
    pub fate: Fate,
    /// Harness time it was first seen (sampled, or durable when only
    /// durable readings are known), ms.
    pub sampled_at_ms: u64,
    /// Simulated time it was acknowledged durable, ms (if it was).
    pub durable_at_ms: Option<u64>,
    /// Positions the producer reported for it (one per delivery report).
    pub delivered_at: Vec<RecordPosition>,
    /// Simulated time of its first delivery report, ms (if it had one).
    pub first_delivered_at_ms: Option<u64>,
}

/// Everything the harness knows, for every gateway.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Whether every sampled reading is known (simulator) or only durable ones
    /// (real world, from ledger files).
    pub knows_sampled: bool,
    entries: BTreeMap<ReadingId, Entry>,
    /// Identities sampled twice with different values (seq reuse).
    reused: Vec<(Reading, Reading)>,
    /// Readings the runner marked dropped by a drop-oldest spool policy or
    /// destroyed by injected damage, by gateway: counts only.
    reported_losses: BTreeMap<String, u64>,
    /// Gateways whose spool reported damaged records, with the counts.
    damage_reports: BTreeMap<String, u64>,
    /// A clock for `durable_at_ms`, set by the runner.
    now_ms: u64,
}

impl Ledger {
    /// An empty ledger; `knows_sampled` says whether sampling is observed.
    pub fn new(knows_sampled: bool) -> Self {
        Self {
            knows_sampled,
            ..Self::default()
        }
    }

    /// Sets the harness time used to stamp durability, ms.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// The harness time last set, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Records a sampled reading.
    pub fn sampled(&mut self, reading: &Reading) {
        let id = reading.id();
        if let Some(existing) = self.entries.get(&id) {
            if !existing.reading.same_values(reading) {
                self.reused.push((existing.reading.clone(), reading.clone()));
            }
            return;
        }
        self.entries.insert(
            id,
            Entry {
                reading: reading.clone(),
                fate: Fate::Sampled,
                sampled_at_ms: self.now_ms,
                durable_at_ms: None,
                delivered_at: Vec::new(),
                first_delivered_at_ms: None,
            },
        );
    }

    /// Records readings acknowledged durable.
    pub fn durable(&mut self, readings: &[Reading]) {
        for reading in readings {
            if !self.entries.contains_key(&reading.id()) {
                self.sampled(reading);
            }
            let entry = self.entries.get_mut(&reading.id()).expect("inserted above");
            if !entry.reading.same_values(reading) {
                self.reused.push((entry.reading.clone(), reading.clone()));
                continue;
            }
            entry.fate = Fate::Durable;
            entry.durable_at_ms.get_or_insert(self.now_ms);
        }
    }

    /// Records a rejected reading.
    pub fn rejected(&mut self, reading: &Reading, reason: RejectReason) {
        self.sampled(reading);
        if let Some(entry) = self.entries.get_mut(&reading.id())
            && entry.fate == Fate::Sampled
        {
            entry.fate = Fate::Rejected(reason.into());
        }
    }

    /// Records a delivery report.
    pub fn delivered(&mut self, reading: &Reading, position: RecordPosition) {
        if let Some(entry) = self.entries.get_mut(&reading.id()) {
            entry.delivered_at.push(position);
            entry.first_delivered_at_ms.get_or_insert(self.now_ms);
        }
    }

    /// The real world's stand-in for a delivery report, which a real
    /// gateway does not hand out: the reading was first seen in the topic at
    /// `at_ms` (the sample of the broker's high watermark that first held
    /// it). Sets only the time of the first delivery; the positions stay
    /// those the producer reported (none), so the checker's check of
    /// reported positions has nothing to compare.
    pub fn first_seen_in_topic(&mut self, id: &ReadingId, at_ms: u64) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.first_delivered_at_ms.get_or_insert(at_ms);
        }
    }

    /// A gateway crashed or lost power: what it sampled and had not made
    /// durable is lost (allowed, counted).
    pub fn gateway_crashed(&mut self, gateway_id: &str) {
        for entry in self.entries.values_mut() {
            if entry.fate == Fate::Sampled && entry.reading.gateway_id == gateway_id {
                entry.fate = Fate::LostBeforeDurable;
            }
        }
    }

    /// A gateway's spool reported `records` damaged records (recovery or reads).
    pub fn damage_reported(&mut self, gateway_id: &str, records: u64) {
        *self.damage_reports.entry(gateway_id.to_owned()).or_default() += records;
    }

    /// A gateway's spool reported `records` readings dropped by policy.
    pub fn loss_reported(&mut self, gateway_id: &str, records: u64) {
        *self.reported_losses.entry(gateway_id.to_owned()).or_default() += records;
    }

    /// All entries, by identity.
    pub fn entries(&self) -> &BTreeMap<ReadingId, Entry> {
        &self.entries
    }

    /// Pairs of different readings sampled with the same identity.
    pub fn reused_identities(&self) -> &[(Reading, Reading)] {
        &self.reused
    }

    /// Damaged records reported per gateway.
    pub fn damage_reports(&self) -> &BTreeMap<String, u64> {
        &self.damage_reports
    }

    /// Readings dropped by policy, reported per gateway.
    pub fn reported_losses(&self) -> &BTreeMap<String, u64> {
        &self.reported_losses
    }

    /// Gateways seen in the ledger.
    pub fn gateways(&self) -> BTreeSet<String> {
        self.entries.keys().map(|id| id.gateway_id.clone()).collect()
    }

    /// Reads a JSON-lines ledger file written by `soilstream gateway --ledger`
    /// (durable readings only). A torn last line (the gateway was killed
    /// mid-write) is ignored; any other bad line is an error naming it.
    pub fn load_jsonl(&mut self, path: &std::path::Path) -> Result<usize, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut loaded = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Reading>(line) {
                Ok(reading) => loaded.push(reading),
                Err(_) if index + 1 == lines.len() && !text.ends_with('\n') => break,
                Err(e) => return Err(format!("{}:{}: {e}", path.display(), index + 1)),
            }
        }
        let count = loaded.len();
        self.durable(&loaded);
        Ok(count)
    }
}

/// A [`GatewayObserver`] that writes into a shared ledger.
#[derive(Debug, Clone)]
pub struct LedgerObserver {
    ledger: Rc<RefCell<Ledger>>,
}

impl LedgerObserver {
    /// An observer feeding `ledger`.
    pub fn new(ledger: Rc<RefCell<Ledger>>) -> Self {
        Self { ledger }
    }
}

impl GatewayObserver for LedgerObserver {
    fn on_sampled(&self, reading: &Reading) {
        self.ledger.borrow_mut().sampled(reading);
    }

    fn on_durable(&self, readings: &[Reading]) {
        self.ledger.borrow_mut().durable(readings);
    }

    fn on_rejected(&self, reading: &Reading, reason: RejectReason) {
        self.ledger.borrow_mut().rejected(reading, reason);
    }

    fn on_delivered(&self, reading: &Reading, position: RecordPosition) {
        self.ledger.borrow_mut().delivered(reading, position);
    }
}
