//! The `/metrics` handle, and the reference rendering through opentelemetry-prometheus.

use std::sync::Arc;

use futures::future::BoxFuture;
use prometheus::{Encoder, Registry, TextEncoder};

use super::scrape::Exposition;

/// The content type of the text exposition format. Scrapers that ask for
/// protobuf or OpenMetrics fall back to it when it is what the server says it sent.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Render = dyn Fn(bool) -> Result<Exposition, RenderError> + Send + Sync;
type CatchUp = dyn Fn() -> BoxFuture<'static, ()> + Send + Sync;

/// Renders `/metrics`. Rendering may run metric callbacks synchronously, so
/// call it from a blocking thread, not an async worker.
#[derive(Clone)]
pub struct MetricsHandle {
    render: Arc<Render>,
    catch_up: Arc<CatchUp>,
    complete: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The pipelines are being shut down.
    #[error("the Prometheus pipeline is shut down")]
    NoRegistry,
    /// The reference encoder rejected the gathered families.
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
    /// Writing the exposition failed.
    #[error("writing metrics: {0}")]
    Write(#[from] std::io::Error),
    /// The SDK could not collect.
    #[error("collecting metrics: {0}")]
    Collect(String),
}

impl MetricsHandle {
    pub(crate) fn new(
        render: impl Fn(bool) -> Result<Exposition, RenderError> + Send + Sync + 'static,
        catch_up: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
        complete: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        MetricsHandle {
            render: Arc::new(render),
            catch_up: Arc::new(catch_up),
            complete: Arc::new(complete),
        }
    }

    /// True once `/metrics` shows the whole synced view: the first rendering
    /// after the initial list is done. Until then `/readyz` says not ready,
    /// so that no scraper gets a partial picture from a new replica.
    pub fn is_complete(&self) -> bool {
        (self.complete)()
    }

    /// Resolves when the rendering shows the latest change of the view (or
    /// after a bounded wait). Await it before [`MetricsHandle::render`].
    pub async fn caught_up(&self) {
        (self.catch_up)().await
    }

    /// The body of one scrape, gzip-encoded if `gzip` and the encoder supports it.
    pub fn render(&self, gzip: bool) -> Result<Exposition, RenderError> {
        (self.render)(gzip)
    }
}

/// Gathers every instrument through opentelemetry-prometheus and encodes the text exposition.
pub(super) fn render(registry: &Registry) -> Result<Vec<u8>, RenderError> {
    let families = registry.gather();
    let mut body = Vec::with_capacity(64 * 1024);
    TextEncoder::new().encode(&families, &mut body)?;
    Ok(body)
}
