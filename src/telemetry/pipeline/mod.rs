//! From the view to points: the metric families (pure functions of a
//! node), the observable instruments that record them for self-telemetry and
//! the reference path, and the one pass that writes the per-node families
//! for both outputs, shard by shard, only where nodes changed.

pub mod collect;
pub mod families;
pub mod instruments;
pub mod otlp_cache;
pub mod pass;
pub mod shards;
mod surface;
