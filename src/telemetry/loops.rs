//! The telemetry's loops: each waits for its triggers and does what
//! [`triggers::plan`] says. Nothing here decides when to write readings.

use std::time::Duration;

use super::{
    Telemetry,
    triggers::{self, Trigger},
};

impl Telemetry {
    /// Runs the telemetry's loops until the process stops: the resizer, the
    /// `/metrics` renderer, the OTLP exporter and the log records' sender.
    pub async fn run(self) {
        tokio::join!(
            self.clone().resize_loop(),
            self.clone().render_loop(),
            self.clone().export_loop(),
            async {
                if let Some(logs) = &self.inner.logs {
                    logs.run().await;
                }
            },
        );
    }

    /// Renders the node section of `/metrics` when the view changes or the
    /// role does.
    async fn render_loop(self) {
        let outputs = self.inner.outputs;
        if !outputs.text {
            return;
        }
        let mut changes = self.inner.sources.view.health().subscribe();
        let mut leading = self.inner.sources.leadership.subscribe();
        changes.borrow_and_update();
        leading.borrow_and_update();
        self.render().await;
        loop {
            let trigger = tokio::select! {
                r = changes.changed() => match r {
                    Ok(()) => Trigger::ViewChanged,
                    Err(_) => return,
                },
                Ok(()) = leading.changed() => match *leading.borrow_and_update() {
                    true => Trigger::Elected,
                    false => Trigger::SteppedDown,
                },
            };
            let plan = triggers::plan(trigger, outputs);
            if plan.settle {
                self.inner.settle().await;
            }
            if plan.render {
                // What the render shows is read from here on: a change after this is rendered next.
                changes.borrow_and_update();
                self.render().await;
            }
        }
    }

    async fn render(&self) {
        let inner = self.inner.clone();
        rethrow(tokio::task::spawn_blocking(move || inner.render_section()).await);
    }

    /// Exports over OTLP every interval, and at once on gaining leadership,
    /// until [`Telemetry::shutdown`].
    async fn export_loop(self) {
        let Some(exporter) = &self.inner.otlp else { return };
        let outputs = self.inner.outputs;
        let interval = self.inner.settings.export_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = self.inner.sources.leadership.subscribe();
        leading.borrow_and_update();
        // When this replica last exported as the leader.
        let mut led: Option<tokio::time::Instant> = None;
        loop {
            let trigger = tokio::select! {
                _ = ticks.tick() => Trigger::ExportTick,
                Ok(()) = leading.changed() => match *leading.borrow_and_update() {
                    // A renewal that came after the deadline is announced as a new
                    // leadership; if this replica led within the interval, its points
                    // are fresh, and exporting at once on every late renewal would
                    // multiply what a slow API server's cluster is billed.
                    true if led.is_some_and(|t| t.elapsed() < interval) => continue,
                    true => Trigger::Elected,
                    false => Trigger::SteppedDown,
                },
            };
            let plan = triggers::plan(trigger, outputs);
            if plan.restart_interval {
                ticks.reset();
            }
            if plan.export {
                let leader = self.inner.sources.leadership.is_leader();
                self.inner.export_cycle(exporter).await;
                if leader {
                    led = Some(tokio::time::Instant::now());
                }
            }
        }
    }

    /// Keeps the cardinality limits sized to the cluster: rebuilds the
    /// reference encoder's pipeline with larger limits whenever the view
    /// outgrows them. Runs forever.
    async fn resize_loop(self) {
        let mut changes = self.inner.sources.view.health().subscribe();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = self.inner.notify.notified() => {}
            }
            self.resize().await;
            // Bound the cost of recounting under heavy churn.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Rebuilds the reference encoder's pipeline if the view outgrew its limits.
    pub(super) async fn resize(&self) {
        let inner = self.inner.clone();
        rethrow(tokio::task::spawn_blocking(move || inner.grow()).await);
    }
}

/// The result of blocking work a loop waited for; a panic in it is the
/// loop's panic. Swallowed, the pass would stop half done (its changed names
/// taken, its shards not written) while the process looked healthy; passed
/// on, it ends the telemetry task, and the process with it (`tasks`).
pub(super) fn rethrow<T>(result: Result<T, tokio::task::JoinError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}
