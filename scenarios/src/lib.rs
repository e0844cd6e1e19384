//! Scenarios, the scenario runner and the invariant checker.
//!
//! The [`checker`] and the [`ledger`] are shared by both worlds: the
//! simulator's scenario runner and the real-broker end-to-end tests judge
//! their runs with the same code. A scenario ([`scenario`]) is data: a TOML
//! file with a topology, a fault timeline ([`timeline`]) and expectations;
//! [`runner`] plays it in the world [`world`] builds.

pub mod checker;
pub mod ledger;
pub mod runner;
pub mod scenario;
pub mod timeline;
pub mod world;
