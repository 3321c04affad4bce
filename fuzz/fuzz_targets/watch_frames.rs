//! Any bytes as a protobuf watch body (split at an arbitrary point) and as a
//! LIST body, of Nodes and of node Leases: frames, envelopes and objects are
//! decoded or refused with a reason, never a panic, and no frame over the
//! limit is ever held.
#![no_main]

use kube_node_status::cluster::{
    NodeLease,
    proto::{Frames, decode_list, decode_list_of, decode_object, decode_watch_event, decode_watch_event_of},
};
use libfuzzer_sys::fuzz_target;

/// Small, so that the fuzzer reaches the limit.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut frames = Frames::with_limit(LIMIT);
    for chunk in [&data[..cut], &data[cut..]] {
        frames.push(chunk);
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= LIMIT);
                    let _ = decode_watch_event(&frame);
                    let _ = decode_watch_event_of::<NodeLease>(&frame);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.reason().is_empty());
                    assert_eq!(frames.pending(), 0, "a refused frame is not held");
                    return;
                }
            }
        }
        // Only a frame's prefix and what has arrived of it are held.
        assert!(frames.pending() <= 4 + LIMIT);
    }
    let _ = frames.finish();
    let _ = decode_object(data);
    let _ = decode_list(data);
    let _ = decode_list_of::<NodeLease>(data);
});
