//! Statements that change the catalog, one module per kind of object. Each adds methods to
//! [`crate::Tocsin`]; `Tocsin::execute_statement` dispatches to them.
//!
//! | module | statements |
//! |---|---|
//! | [`source`] | `CREATE SOURCE` |
//! | [`view`] | `CREATE VIEW`, `CREATE RULE` |
//! | [`sink`] | `CREATE SINK`, `CREATE SILENCE` |
//! | [`drop`] | `DROP ...` |

mod drop;
mod sink;
mod source;
mod view;
