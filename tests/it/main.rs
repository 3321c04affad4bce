//! Every integration test in one binary: they drive the real exporter binary,
//! the fake API server and the third-party peers, and share one harness
//! (`common`). One binary links once instead of once per file.

mod common;

mod auth;
mod changes;
mod docs;
mod encodings;
mod events;
mod exporter;
mod fake_apiserver;
mod faults;
mod gcp;
mod hardening;
mod heartbeats;
mod image;
mod install;
mod ksm;
mod leader;
mod names;
mod node_picture;
mod paths;
mod peers;
mod profiles;
mod semconv;
mod sim;
mod tls;
