//! kube-node-status: the readiness of every Kubernetes node as OpenTelemetry metrics.
//!
//! Data flows one way: [`cluster`] (watch and view) → [`readings`] (pure) →
//! [`telemetry`] (instruments, providers, exporters) → [`http`] (the server).
//! [`config`] is parsed once and passed down as plain structs; [`auth`]
//! checks scrapes' bearer tokens for [`http`].

pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
#[cfg(feature = "fake-apiserver")]
pub mod fake;
pub mod http;
pub mod leader;
pub mod logging;
pub mod memory;
pub mod readings;
pub mod telemetry;
pub mod tls;
