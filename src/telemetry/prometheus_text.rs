//! Renders the Prometheus text exposition from opentelemetry-prometheus's registry.

use std::sync::Arc;

use prometheus::{Encoder, Registry, TextEncoder};

/// The content type of the text exposition format. Scrapers that ask for
/// protobuf or OpenMetrics fall back to it when it is what the server says it sent.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type RegistrySource = dyn Fn() -> Option<Registry> + Send + Sync;

/// Renders `/metrics`. Gathering runs every callback synchronously, so call it
/// from a blocking thread, not an async worker.
#[derive(Clone)]
pub struct MetricsHandle {
    registry: Arc<RegistrySource>,
}

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The pipelines are being shut down.
    #[error("the Prometheus pipeline is shut down")]
    NoRegistry,
    /// The encoder rejected the gathered families.
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

impl MetricsHandle {
    pub(crate) fn new(registry: impl Fn() -> Option<Registry> + Send + Sync + 'static) -> Self {
        MetricsHandle {
            registry: Arc::new(registry),
        }
    }

    /// Collects every instrument and encodes the text exposition.
    pub fn render(&self) -> Result<Vec<u8>, RenderError> {
        let registry = (self.registry)().ok_or(RenderError::NoRegistry)?;
        let families = registry.gather();
        let mut body = Vec::with_capacity(64 * 1024);
        TextEncoder::new().encode(&families, &mut body)?;
        Ok(body)
    }
}
