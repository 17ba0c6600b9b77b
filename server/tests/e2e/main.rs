//! End-to-end tests against the real `tocsin` binary over real sockets.

mod common;

mod agents;
mod alerts;
mod amapi;
mod backpressure;
// Shared with the console benchmark, which uses parts the tests do not.
#[allow(dead_code)]
#[path = "../../../benches/src/browser.rs"]
mod browser;
mod cli;
mod connectors;
mod console;
mod crash;
mod ecosystem;
mod garbage;
mod history;
mod http;
mod pg;
mod replicas;
mod security;
mod slow;
mod snmp;
mod storm;
mod timers;
mod websocket;
