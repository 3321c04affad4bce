//! kube-node-status: the readiness of every Kubernetes node as OpenTelemetry metrics.
//!
//! Data flows one way: [`cluster`] (watch and view) → [`readings`] (pure) →
//! [`telemetry`] (instruments, providers, exporters) → [`http`] (the server).
//! [`cli`] parses the command line; [`config`] turns it into plain settings
//! once, passed down; [`auth`] checks scrapes' bearer tokens for [`http`];
//! [`fake`] is a Kubernetes API server for tests, demos and benchmarks.

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
#[cfg(feature = "fake-apiserver")]
pub mod fake;
pub mod http;
pub mod leader;
pub mod logging;
pub mod readings;
pub mod surface;
pub mod tasks;
pub mod telemetry;
pub mod tls;
