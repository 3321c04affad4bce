//! The process's long-lived tasks, watched: each is meant to run for as long
//! as the process does, so one that ends (a panic, or a return nobody
//! planned) ends the process with an error. Kubernetes then restarts the pod.
//! The alternative, serving on with a frozen view or no readings while
//! `/healthz` says 200, is the one thing an exporter must never do.

use std::future::Future;

use futures::FutureExt;
use tokio::task::{JoinError, JoinHandle};

/// A named long-lived task.
pub struct Task {
    name: &'static str,
    handle: JoinHandle<()>,
}

impl Task {
    /// Watches `handle` under `name`.
    pub fn new(name: &'static str, handle: JoinHandle<()>) -> Task {
        Task { name, handle }
    }

    /// Spawns `future` as the task `name`.
    pub fn spawn(name: &'static str, future: impl Future<Output = ()> + Send + 'static) -> Task {
        Task::new(name, tokio::spawn(future))
    }

    /// Stops the task.
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// The task's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Stops watching the task, handing back its handle.
    pub fn into_handle(self) -> JoinHandle<()> {
        self.handle
    }
}

/// Why a long-lived task ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// It panicked.
    #[error("the {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },
    /// It returned, which none of them should.
    #[error("the {task} task stopped unexpectedly")]
    Returned { task: &'static str },
    /// It was cancelled by someone other than the shutdown.
    #[error("the {task} task was cancelled")]
    Cancelled { task: &'static str },
}

fn ended(task: &'static str, result: Result<(), JoinError>) -> Ended {
    match result {
        Ok(()) => Ended::Returned { task },
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            Ended::Panicked { task, message }
        }
        Err(_) => Ended::Cancelled { task },
    }
}

/// Resolves when the first of `tasks` ends, saying which and how; never
/// resolves if `tasks` is empty.
pub async fn first_to_end(tasks: &mut [Task]) -> Ended {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let waits = tasks
        .iter_mut()
        .map(|t| {
            let name = t.name;
            (&mut t.handle).map(move |r| ended(name, r))
        })
        .collect::<Vec<_>>();
    futures::future::select_all(waits).await.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn forever() -> Task {
        Task::spawn("forever", std::future::pending())
    }

    #[tokio::test]
    async fn a_panic_a_return_and_a_cancel_each_end_the_wait_and_are_named() {
        let mut tasks = vec![
            forever(),
            Task::spawn("watch", async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("boom at {}", 42);
            }),
        ];
        let e = first_to_end(&mut tasks).await;
        assert_eq!(e.to_string(), "the watch task panicked: boom at 42");

        let mut tasks = vec![forever(), Task::spawn("telemetry", async { panic!("static") })];
        assert_eq!(
            first_to_end(&mut tasks).await.to_string(),
            "the telemetry task panicked: static"
        );

        let mut tasks = vec![forever(), Task::spawn("leader election", async {})];
        assert!(matches!(
            first_to_end(&mut tasks).await,
            Ended::Returned {
                task: "leader election"
            }
        ));

        let mut tasks = vec![forever(), forever()];
        tasks[1].name = "cancelled";
        tasks[1].abort();
        assert!(matches!(
            first_to_end(&mut tasks).await,
            Ended::Cancelled { task: "cancelled" }
        ));
    }

    #[tokio::test]
    async fn no_tasks_never_end() {
        let r = tokio::time::timeout(Duration::from_millis(50), first_to_end(&mut [])).await;
        assert!(r.is_err());
    }
}
