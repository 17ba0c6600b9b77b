//! End-to-end tests against the real `tocsin` binary over real sockets.

mod common;

mod alerts;
mod backpressure;
mod cli;
mod crash;
mod garbage;
mod http;
mod websocket;
