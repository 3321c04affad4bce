//! Google's Telemetry API (`--otlp-auth google`): Application Default
//! Credentials on every OTLP request, and the resource attributes the API
//! needs to map points onto the `prometheus_target` monitored resource.

mod auth;
mod metadata;
mod resource;

pub use auth::{GoogleAuth, RequestHeaders, permission_hint};
pub use resource::{complete as complete_resource, location_attribute};
