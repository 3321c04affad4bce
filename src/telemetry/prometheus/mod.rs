//! The `/metrics` handle, and the reference rendering through opentelemetry-prometheus.

use std::sync::Arc;

use ::prometheus::{Encoder, Registry, TextEncoder};
use futures::future::BoxFuture;

pub mod body;
#[cfg(test)]
mod reference_tests;
mod section;
pub mod text;

use body::Exposition;

/// The content type of the text exposition format. Scrapers that ask for
/// protobuf or OpenMetrics fall back to it when it is what the server says it sent.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/metrics` is served from. Rendering may run metric callbacks
/// synchronously: call [`Metrics::render`] from a blocking thread, not an async worker.
pub trait Metrics: Send + Sync + 'static {
    /// The body of one scrape, gzip-encoded if `gzip` and the encoder supports it.
    fn render(&self, gzip: bool) -> Result<Exposition, RenderError>;

    /// Resolves when the rendering shows the latest change of the view (or
    /// after a bounded wait). Await it before [`Metrics::render`].
    fn caught_up(&self) -> BoxFuture<'_, ()>;

    /// True once `/metrics` shows the whole synced view: the first rendering
    /// after the initial list is done. Until then `/readyz` says not ready,
    /// so that no scraper gets a partial picture from a new replica.
    fn is_complete(&self) -> bool;
}

/// A shared handle on what `/metrics` is served from.
pub type MetricsHandle = Arc<dyn Metrics>;

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The pipelines are being shut down.
    #[error("the Prometheus pipeline is shut down")]
    NoRegistry,
    /// The reference encoder rejected the gathered families.
    #[error("encoding metrics: {0}")]
    Encode(#[from] ::prometheus::Error),
    /// Writing the exposition failed.
    #[error("writing metrics: {0}")]
    Write(#[from] std::io::Error),
    /// The SDK could not collect.
    #[error("collecting metrics: {0}")]
    Collect(String),
    /// The cluster kept outgrowing the reference encoder's limits while it
    /// collected: no answer rather than one without some families.
    #[error("the cluster outgrew the metric pipeline while it was read; try again")]
    Outgrown,
}

/// Gathers every instrument through opentelemetry-prometheus and encodes the text exposition.
pub(super) fn render(registry: &Registry) -> Result<Vec<u8>, RenderError> {
    let families = registry.gather();
    let mut body = Vec::with_capacity(64 * 1024);
    TextEncoder::new().encode(&families, &mut body)?;
    Ok(body)
}
