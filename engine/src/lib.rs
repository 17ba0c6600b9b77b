//! tocsin's continuous query engine: timely/differential workers that maintain views and rules
//! incrementally as rows arrive.
//!
//! | module | owns |
//! |---|---|
//! | [`engine`] | the coordinator: the thread-safe handle, time, pushes, peeks, subscriptions |
//! | [`functions`] | functions shared by continuous and batch evaluation (`rate()`) |
//! | [`plan`] | the plan IR the SQL frontend lowers to, and `EXPLAIN` |
//! | `worker` | the timely worker loop and its commands |
//! | `render` | plans into dataflows: one file per operator family |
//! | `source` | a source's retained rows on one worker, shared by every reader |
//! | [`window`] | reading part of a source's window: series numbers, time ranges, the table |
//! | `wake` | when dataflows move: pushes, held updates falling due, reads; idle ones cost nothing |
//! | [`table`] | tables: rows replaced in place by key, for state tocsin keeps (alert instances) |
//! | [`row`] | compact rows and their conversion to and from Arrow |
//! | [`error`] | the engine's error type |
//! | `share` | aggregations shared by every view and rule that contains them |
//!
//! The engine knows nothing of SQL text, HTTP or SNMP: it takes plans and record batches.

pub mod engine;
pub mod error;
pub mod functions;
pub mod plan;
mod render;
pub mod row;
mod share;
mod source;
pub mod table;
mod wake;
pub mod window;
mod worker;

pub use engine::{
    fmt_ms, write_ms, Clock, Engine, EngineConfig, Frontier, PeekResult, PushOutcome, Release,
    SubscribeEvent, Subscription,
};
pub use error::{EngineError, Result};
pub use plan::{AggFunc, Aggregate, Expr, JoinKind, MfpStep, Node, Plan, SortKey, TimeBound};
pub use render::subscribe::Backlog;
pub use row::{Datum, Row};
pub use source::batch_bytes;
pub use table::TableWrite;
pub use window::{WindowBatch, WindowTable};
