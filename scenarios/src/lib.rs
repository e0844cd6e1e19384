//! Scenarios, the scenario runner and the invariant checker.
//!
//! The [`checker`] and the [`ledger`] are shared by both worlds: the
//! simulator's scenario runner and the real-broker end-to-end tests judge
//! their runs with the same code. A scenario ([`scenario`]) is data: a TOML
//! file with a topology, a fault timeline ([`timeline`]) and expectations;
//! [`runner`] plays it in the world [`world`] builds. Backfills of SD-card
//! logs ([`sdcard`]) run as hosts of that world ([`backfill`]). The
//! downstream stages run as hosts too ([`qaqc`], [`archive`], sharing
//! [`stage`]), judged by [`downstream`] and [`archived`].

pub mod archive;
pub mod archived;
pub mod backfill;
pub mod checker;
pub mod downstream;
pub mod hostile;
pub mod judge;
pub mod ledger;
pub mod observe;
pub mod qaqc;
pub mod runner;
pub mod scenario;
pub mod sdcard;
pub mod stage;
pub mod timeline;
pub mod world;
