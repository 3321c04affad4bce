//! What sets the one pass going, and what each trigger asks of the outputs:
//! the one place that decides when readings are written again. The loops
//! (`loops.rs`) wait for triggers and do what [`plan`] says.

use super::pipeline::pass::Outputs;

/// Something that happened, which may call for readings written again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The view changed: a node stored anew or deleted, a relist done.
    ViewChanged,
    /// This replica became the leader.
    Elected,
    /// This replica stopped leading.
    SteppedDown,
    /// The OTLP export interval elapsed.
    ExportTick,
    /// A scrape of `/metrics` arrived.
    Scrape,
}

/// What a trigger asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Wait for the view to stay still before writing: a burst of changes
    /// (a zone outage) is written once, after it.
    pub settle: bool,
    /// Run the pass and publish the node section of `/metrics`.
    pub render: bool,
    /// Run an OTLP export cycle (which runs the pass for itself).
    pub export: bool,
    /// Count the next export interval from now.
    pub restart_interval: bool,
    /// Wait, a bounded time, until the section shows the view and the role as they are now.
    pub catch_up: bool,
}

/// What `trigger` asks of the outputs that are on.
///
/// - A change of the view re-renders `/metrics` once the view settles; OTLP
///   sends it at its next tick, not before: a push per change would bill
///   per change.
/// - Gaining or losing leadership re-renders `/metrics` at once: the
///   cluster readings are computed only while leading, and a quiet cluster
///   may not change for hours. A new leader also exports at once, and
///   counts its interval from then: the old leader's last points are up to
///   an interval old.
/// - A scrape waits for the rendering of what it asks about.
pub fn plan(trigger: Trigger, outputs: Outputs) -> Plan {
    let text = outputs.text;
    let otlp = outputs.otlp;
    match trigger {
        Trigger::ViewChanged => Plan {
            settle: text,
            render: text,
            ..Plan::default()
        },
        Trigger::Elected => Plan {
            render: text,
            export: otlp,
            restart_interval: otlp,
            ..Plan::default()
        },
        Trigger::SteppedDown => Plan {
            render: text,
            ..Plan::default()
        },
        Trigger::ExportTick => Plan {
            export: otlp,
            ..Plan::default()
        },
        Trigger::Scrape => Plan {
            catch_up: text,
            ..Plan::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Outputs = Outputs {
        text: true,
        otlp: true,
    };
    const TEXT: Outputs = Outputs {
        text: true,
        otlp: false,
    };
    const OTLP: Outputs = Outputs {
        text: false,
        otlp: true,
    };
    const NONE: Outputs = Outputs {
        text: false,
        otlp: false,
    };

    fn p(settle: bool, render: bool, export: bool, restart_interval: bool, catch_up: bool) -> Plan {
        Plan {
            settle,
            render,
            export,
            restart_interval,
            catch_up,
        }
    }

    #[test]
    fn a_view_change_renders_metrics_after_settling_and_leaves_otlp_to_its_tick() {
        assert_eq!(
            plan(Trigger::ViewChanged, BOTH),
            p(true, true, false, false, false)
        );
        assert_eq!(plan(Trigger::ViewChanged, OTLP), Plan::default());
        assert_eq!(plan(Trigger::ViewChanged, NONE), Plan::default());
    }

    /// The finding this table was written for: a new leader on a quiet
    /// cluster served no cluster readings on `/metrics` until a node changed.
    #[test]
    fn gaining_leadership_renders_at_once_for_metrics_alone_too() {
        assert_eq!(plan(Trigger::Elected, TEXT), p(false, true, false, false, false));
        assert_eq!(plan(Trigger::Elected, BOTH), p(false, true, true, true, false));
        assert_eq!(plan(Trigger::Elected, OTLP), p(false, false, true, true, false));
    }

    #[test]
    fn losing_leadership_renders_what_a_follower_holds() {
        assert_eq!(
            plan(Trigger::SteppedDown, TEXT),
            p(false, true, false, false, false)
        );
        assert_eq!(plan(Trigger::SteppedDown, OTLP), Plan::default());
    }

    #[test]
    fn an_export_tick_exports_and_nothing_else() {
        assert_eq!(
            plan(Trigger::ExportTick, BOTH),
            p(false, false, true, false, false)
        );
        assert_eq!(plan(Trigger::ExportTick, TEXT), Plan::default());
    }

    #[test]
    fn a_scrape_catches_up_with_the_streaming_section_only() {
        assert_eq!(plan(Trigger::Scrape, TEXT), p(false, false, false, false, true));
        assert_eq!(plan(Trigger::Scrape, OTLP), Plan::default());
    }
}
