//! One table test per behaviour of the watch loop, with a scripted API.

use std::{collections::VecDeque, sync::Mutex};

use super::*;

/// What the scripted API answers, call by call.
enum Answer {
    List(Result<ListPage, WatchError>),
    Watch(Result<Vec<Result<WatchEvent, WatchError>>, WatchError>),
    /// A WATCH whose updates carry fingerprints, as protobuf ones do.
    Printed(Vec<Result<(WatchEvent, Option<Fingerprint>), WatchError>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    List(Option<String>),
    Watch(WatchFrom),
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    calls: std::sync::Arc<Mutex<Vec<Call>>>,
}

struct Scripted(VecDeque<Result<(WatchEvent, Option<Fingerprint>), WatchError>>);

impl EventSource for Scripted {
    /// As the protobuf source: an update whose fingerprint `known` holds is `Unchanged`.
    async fn next(&mut self, known: Option<&Known>) -> Option<Result<Received, WatchError>> {
        Some(self.0.pop_front()?.map(|(event, f)| match (&event, f, known) {
            (WatchEvent::Added(n) | WatchEvent::Modified(n), Some(f), Some(known)) if known.holds(f) => {
                Received::Unchanged {
                    resource_version: n.metadata.resource_version.clone().unwrap_or_default(),
                }
            }
            _ => Received::Event(event, f),
        }))
    }
}

impl Source for Script {
    type Events = Scripted;

    async fn list(&self, token: Option<String>) -> Result<ListPage, WatchError> {
        self.calls.lock().unwrap().push(Call::List(token));
        let next = self.answers.lock().unwrap().pop_front();
        match next {
            Some(Answer::List(a)) => a,
            _ => std::future::pending().await,
        }
    }

    async fn watch(&self, from: WatchFrom) -> Result<Scripted, WatchError> {
        self.calls.lock().unwrap().push(Call::Watch(from));
        let next = self.answers.lock().unwrap().pop_front();
        match next {
            Some(Answer::Watch(a)) => {
                a.map(|events| Scripted(events.into_iter().map(|e| e.map(|e| (e, None))).collect()))
            }
            Some(Answer::Printed(events)) => Ok(Scripted(events.into())),
            _ => std::future::pending().await,
        }
    }
}

fn node(name: &str, rv: &str) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.resource_version = Some(rv.into());
    n
}

fn page(names: &[&str], rv: &str, token: Option<&str>) -> Answer {
    Answer::List(Ok(ListPage {
        resource_version: rv.into(),
        continue_token: token.map(Into::into),
        items: names.iter().map(|n| node(n, rv)).collect(),
        fingerprints: Vec::new(),
    }))
}

fn status(code: i32) -> ApiStatus {
    ApiStatus {
        code,
        reason: "r".into(),
        message: "m".into(),
    }
}

fn api(step: Step, code: i32) -> WatchError {
    WatchError::Api {
        step,
        status: status(code),
    }
}

fn modified(name: &str, rv: &str) -> Result<WatchEvent, WatchError> {
    Ok(WatchEvent::Modified(Box::new(node(name, rv))))
}

fn bookmark(rv: &str, end: bool) -> Result<WatchEvent, WatchError> {
    Ok(WatchEvent::Bookmark {
        resource_version: rv.into(),
        initial_events_end: end,
    })
}

/// A short name for each item: `init`, `+a` (init apply), `a` (apply), `-a`, `done`, `err:<reason>`.
fn short(item: &Item) -> String {
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    match item {
        Ok(Delivered::Event(Event::Init)) => "init".into(),
        Ok(Delivered::Event(Event::InitApply(n))) => format!("+{}", name(n)),
        Ok(Delivered::Event(Event::InitDone)) => "done".into(),
        Ok(Delivered::Event(Event::Apply(n))) => name(n),
        Ok(Delivered::Event(Event::Delete(n))) => format!("-{}", name(n)),
        Ok(Delivered::Unchanged) => "=".into(),
        Err(WatchError::Api { status, .. }) => format!("err:{}", status.code),
        Err(WatchError::Decode(e)) => format!("err:{}", e.reason()),
        Err(e) => format!("err:{e}"),
    }
}

/// Runs `answers` through the loop until it waits for an answer not
/// scripted; returns the items and the calls made.
async fn run(streaming: bool, answers: Vec<Answer>) -> (Vec<String>, Vec<Call>) {
    let script = Script {
        answers: Mutex::new(answers.into()),
        ..Script::default()
    };
    let calls = script.calls.clone();
    let stream = watch(script, streaming, Box::new(|_| {}));
    let mut stream = std::pin::pin!(stream);
    let mut items = Vec::new();
    // The script is done when the loop waits on an answer it does not have.
    while let Ok(Some(item)) = tokio::time::timeout(std::time::Duration::from_millis(50), stream.next()).await
    {
        items.push(short(&item));
    }
    let calls = calls.lock().unwrap().clone();
    (items, calls)
}

fn list(token: Option<&str>) -> Call {
    Call::List(token.map(Into::into))
}

fn from(rv: &str) -> Call {
    Call::Watch(WatchFrom::Version(rv.into()))
}

#[tokio::test]
async fn a_paginated_list_then_a_watch_from_its_version() {
    let (items, calls) = run(
        false,
        vec![
            page(&["a", "b"], "10", Some("t1")),
            page(&["c"], "10", None),
            Answer::Watch(Ok(vec![modified("a", "11")])),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "+b", "+c", "done", "a"]);
    assert_eq!(calls[..4], [list(None), list(Some("t1")), from("10"), from("11")]);
}

#[tokio::test]
async fn a_failed_page_starts_the_list_again_from_its_first_page() {
    let (items, calls) = run(
        false,
        vec![
            page(&["a"], "10", Some("t1")),
            Answer::List(Err(api(Step::List, 410))),
            page(&["a", "b"], "12", None),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "err:410", "init", "+a", "+b", "done"]);
    assert_eq!(calls[..4], [list(None), list(Some("t1")), list(None), from("12")]);
}

#[tokio::test]
async fn a_watch_that_ends_resumes_from_the_last_version_seen() {
    let (items, calls) = run(
        false,
        vec![
            page(&["a"], "10", None),
            Answer::Watch(Ok(vec![modified("a", "11"), bookmark("15", false)])),
            Answer::Watch(Ok(vec![Ok(WatchEvent::Deleted(Box::new(node("a", "16"))))])),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "done", "a", "-a"]);
    assert_eq!(calls, [list(None), from("10"), from("15"), from("16")]);
}

#[tokio::test]
async fn gone_relists_from_an_error_event_or_a_refused_watch() {
    let (items, calls) = run(
        false,
        vec![
            page(&["a"], "10", None),
            Answer::Watch(Ok(vec![Ok(WatchEvent::Error(status(410)))])),
            page(&["b"], "20", None),
            Answer::Watch(Err(api(Step::WatchStart, 410))),
            page(&["c"], "30", None),
        ],
    )
    .await;
    assert_eq!(
        items,
        [
            "init", "+a", "done", "err:410", "init", "+b", "done", "err:410", "init", "+c", "done"
        ]
    );
    assert_eq!(
        calls,
        [
            list(None),
            from("10"),
            list(None),
            from("20"),
            list(None),
            from("30")
        ]
    );
}

#[tokio::test]
async fn other_errors_keep_the_version_and_the_list() {
    let (items, calls) = run(
        false,
        vec![
            page(&["a"], "10", None),
            // A failing watch start is retried from the same version.
            Answer::Watch(Err(api(Step::WatchStart, 500))),
            // An ERROR event other than 410 leaves the stream as it is.
            Answer::Watch(Ok(vec![Ok(WatchEvent::Error(status(500))), modified("a", "11")])),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "done", "err:500", "err:500", "a"]);
    assert_eq!(calls, [list(None), from("10"), from("10"), from("11")]);
}

#[tokio::test]
async fn a_bad_frame_ends_its_watch_and_the_next_resumes_without_a_relist() {
    let (items, calls) = run(
        false,
        vec![
            page(&["a"], "10", None),
            Answer::Watch(Ok(vec![
                modified("a", "11"),
                Err(WatchError::Decode(ProtoError::BadMagic)),
                modified("never", "99"),
            ])),
            Answer::Watch(Ok(vec![modified("b", "12")])),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "done", "a", "err:bad_magic", "b"]);
    assert_eq!(calls, [list(None), from("10"), from("11"), from("12")]);
}

#[tokio::test]
async fn a_list_without_a_version_is_an_error_and_lists_again() {
    let (items, calls) = run(false, vec![page(&["a"], "", None), page(&["a"], "5", None)]).await;
    assert_eq!(
        items,
        [
            "init",
            "+a",
            "err:no resourceVersion to resume from",
            "init",
            "+a",
            "done"
        ]
    );
    assert_eq!(calls, [list(None), list(None), from("5")]);
}

/// A streaming list ends at its bookmark; its stream (given a long deadline
/// for the list) is dropped, and the watch goes on from the bookmark.
#[tokio::test]
async fn a_streaming_list_ends_at_its_bookmark_and_the_watch_goes_on_from_it() {
    let (items, calls) = run(
        true,
        vec![
            Answer::Watch(Ok(vec![
                Ok(WatchEvent::Added(Box::new(node("a", "7")))),
                Ok(WatchEvent::Added(Box::new(node("b", "8")))),
                bookmark("8", false),
                bookmark("9", true),
                modified("never", "10"),
            ])),
            Answer::Watch(Ok(vec![modified("a", "10")])),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "+b", "done", "a"]);
    assert_eq!(
        calls,
        [Call::Watch(WatchFrom::InitialEvents), from("9"), from("10")]
    );
}

/// A change among the initial events (servers before 1.32, or a plain watch
/// served instead): a node handed on cannot be taken back, so this list is
/// made in pages.
#[tokio::test]
async fn a_change_among_the_initial_events_lists_in_pages() {
    for change in [
        modified("a", "8"),
        Ok(WatchEvent::Deleted(Box::new(node("a", "8")))),
    ] {
        let (items, calls) = run(
            true,
            vec![
                Answer::Watch(Ok(vec![Ok(WatchEvent::Added(Box::new(node("a", "7")))), change])),
                page(&["b"], "9", None),
            ],
        )
        .await;
        assert_eq!(items, ["init", "+a", "init", "+b", "done"]);
        assert_eq!(
            calls[..3],
            [Call::Watch(WatchFrom::InitialEvents), list(None), from("9")]
        );
    }
}

/// A watch that ends as soon as it began, having sent nothing, is an error
/// (the caller backs off) and is started again from the same version.
#[tokio::test]
async fn a_watch_that_ends_at_once_is_an_error() {
    let (items, calls) = run(
        false,
        vec![
            page(&["a"], "10", None),
            Answer::Watch(Ok(vec![])),
            Answer::Watch(Ok(vec![modified("a", "11")])),
        ],
    )
    .await;
    assert_eq!(
        items,
        [
            "init",
            "+a",
            "done",
            "err:Watch: the watch ended as soon as it began",
            "a"
        ]
    );
    assert_eq!(calls[..3], [list(None), from("10"), from("10")]);
}

#[tokio::test]
async fn a_server_without_streaming_lists_is_listed_in_pages() {
    let (items, calls) = run(
        true,
        vec![
            Answer::Watch(Err(api(Step::WatchStart, 422))),
            page(&["a"], "10", None),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "done"], "the refusal is no error");
    assert_eq!(
        calls,
        [Call::Watch(WatchFrom::InitialEvents), list(None), from("10")]
    );
}

/// A streaming list that ends before its initial events did (the server's
/// deadline covers sending them) is an error, and this list is made in pages.
#[tokio::test]
async fn a_streaming_list_cut_short_is_an_error_and_lists_in_pages() {
    let (items, calls) = run(
        true,
        vec![
            Answer::Watch(Ok(vec![Ok(WatchEvent::Added(Box::new(node("a", "7"))))])),
            page(&["a", "b"], "9", None),
        ],
    )
    .await;
    assert_eq!(
        items,
        [
            "init",
            "+a",
            "err:List: the streaming list ended before its initial events did",
            "init",
            "+a",
            "+b",
            "done"
        ]
    );
    assert_eq!(
        calls[..3],
        [Call::Watch(WatchFrom::InitialEvents), list(None), from("9")]
    );
}

/// A server that fails a streaming list with a server error is listed in pages.
#[tokio::test]
async fn a_streaming_list_refused_with_a_server_error_lists_in_pages() {
    let (items, calls) = run(
        true,
        vec![
            Answer::Watch(Err(api(Step::WatchStart, 500))),
            page(&["a"], "9", None),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "done"]);
    assert_eq!(calls[..2], [Call::Watch(WatchFrom::InitialEvents), list(None)]);
}

/// A server that ignores `sendInitialEvents` (a plain watch that never ends
/// the initial events, as some emulators serve) is listed in pages.
#[tokio::test]
async fn a_server_that_ignores_streaming_lists_is_listed_in_pages() {
    struct Silent;
    impl EventSource for Silent {
        async fn next(&mut self, _: Option<&Known>) -> Option<Result<Received, WatchError>> {
            std::future::pending().await
        }
    }
    struct Ignoring(std::sync::Arc<Mutex<Vec<Call>>>);
    impl Source for Ignoring {
        type Events = Silent;
        async fn list(&self, token: Option<String>) -> Result<ListPage, WatchError> {
            self.0.lock().unwrap().push(Call::List(token));
            Err(api(Step::List, 410))
        }
        async fn watch(&self, from: WatchFrom) -> Result<Silent, WatchError> {
            self.0.lock().unwrap().push(Call::Watch(from));
            Ok(Silent)
        }
    }
    let calls = std::sync::Arc::new(Mutex::new(Vec::new()));
    let stream = watch(Ignoring(calls.clone()), true, Box::new(|_| {}));
    let mut stream = std::pin::pin!(stream);
    let mut items = Vec::new();
    for _ in 0..2 {
        items.push(short(&stream.next().await.expect("an item")));
    }
    // Init of the streaming list, then (after the idle time) a LIST (failing here).
    assert_eq!(items, ["init", "err:410"]);
    assert_eq!(
        calls.lock().unwrap()[..2],
        [Call::Watch(WatchFrom::InitialEvents), list(None)]
    );
}

/// A fingerprint of node `name` with content `c`.
fn print(name: &str, c: u64) -> Fingerprint {
    Fingerprint {
        name: crate::cluster::proto::fingerprint::name_key(name),
        content: c,
    }
}

/// A LIST page whose nodes carry fingerprints: `(name, content)`.
fn printed_page(nodes: &[(&str, u64)], rv: &str, token: Option<&str>) -> Answer {
    Answer::List(Ok(ListPage {
        resource_version: rv.into(),
        continue_token: token.map(Into::into),
        items: nodes.iter().map(|(n, _)| node(n, rv)).collect(),
        fingerprints: nodes.iter().map(|(n, c)| print(n, *c)).collect(),
    }))
}

fn printed(
    event: fn(Box<Node>) -> WatchEvent,
    name: &str,
    rv: &str,
    c: Option<u64>,
) -> Result<(WatchEvent, Option<Fingerprint>), WatchError> {
    Ok((event(Box::new(node(name, rv))), c.map(|c| print(name, c))))
}

/// An update whose fingerprint is the one handed on last is not decoded
/// (`=`), and still moves the watch on; a changed one is handed on, and its
/// fingerprint becomes the one compared with.
#[tokio::test]
async fn an_update_with_the_fingerprint_handed_on_last_is_not_decoded() {
    let (items, calls) = run(
        false,
        vec![
            printed_page(&[("a", 1), ("b", 7)], "5", None),
            Answer::Printed(vec![
                printed(WatchEvent::Modified, "a", "6", Some(1)),
                printed(WatchEvent::Modified, "a", "7", Some(2)),
                printed(WatchEvent::Modified, "a", "8", Some(2)),
                printed(WatchEvent::Added, "b", "9", Some(7)),
                // Back to what it was before: a change from what was handed on last.
                printed(WatchEvent::Modified, "a", "10", Some(1)),
            ]),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "+b", "done", "=", "a", "=", "=", "a"]);
    assert_eq!(calls, [list(None), from("5"), from("10")]);
}

/// A node deleted, or handed on without a fingerprint (a JSON response), is
/// no longer known: its next update is handed on whatever its fingerprint.
#[tokio::test]
async fn a_deleted_node_or_one_without_a_fingerprint_is_not_known() {
    let (items, _) = run(
        false,
        vec![
            printed_page(&[("a", 1), ("b", 2)], "5", None),
            Answer::Printed(vec![
                printed(WatchEvent::Deleted, "a", "6", Some(1)),
                printed(WatchEvent::Added, "a", "7", Some(1)),
                printed(WatchEvent::Modified, "b", "8", None),
                printed(WatchEvent::Modified, "b", "9", Some(2)),
                printed(WatchEvent::Modified, "b", "10", Some(2)),
            ]),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "+b", "done", "-a", "a", "b", "b", "="]);
}

/// A relist replaces what is known with what it listed: not what a failed
/// attempt's pages delivered, nor nodes it no longer lists.
#[tokio::test]
async fn a_relist_replaces_what_is_known() {
    let (items, _) = run(
        false,
        vec![
            printed_page(&[("a", 1), ("b", 2)], "5", None),
            Answer::Printed(vec![Ok((WatchEvent::Error(status(410)), None))]),
            // The relist: its first attempt fails after a page with a's version 9.
            printed_page(&[("a", 9)], "20", Some("t")),
            Answer::List(Err(api(Step::List, 500))),
            printed_page(&[("a", 3)], "21", None),
            Answer::Printed(vec![
                printed(WatchEvent::Modified, "a", "22", Some(9)),
                printed(WatchEvent::Modified, "a", "23", Some(3)),
                printed(WatchEvent::Added, "b", "24", Some(2)),
            ]),
        ],
    )
    .await;
    assert_eq!(
        items,
        [
            "init", "+a", "+b", "done", "err:410", "init", "+a", "err:500", "init", "+a", "done", "a", "a",
            "b"
        ]
    );
}

/// A streaming list's initial events are all handed on (nothing is known
/// during a list), and what they carried is known once it ends.
#[tokio::test]
async fn a_streaming_list_hands_on_every_initial_event_and_then_knows_them() {
    let (items, _) = run(
        true,
        vec![
            Answer::Printed(vec![
                printed(WatchEvent::Added, "a", "3", Some(1)),
                printed(WatchEvent::Added, "a", "3", Some(1)),
                Ok((
                    WatchEvent::Bookmark {
                        resource_version: "4".into(),
                        initial_events_end: true,
                    },
                    None,
                )),
            ]),
            Answer::Printed(vec![printed(WatchEvent::Modified, "a", "5", Some(1))]),
        ],
    )
    .await;
    assert_eq!(items, ["init", "+a", "+a", "done", "="]);
}
