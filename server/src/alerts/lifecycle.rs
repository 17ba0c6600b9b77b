//! The alert lifecycle as a pure function: one instance's stored state and one event give its
//! new state, the notifications to send and the transition rows to publish. No I/O and no clock
//! (`now` is given), so every transition is tested here by a table.
//!
//! ```text
//!             row appears                 stays `for`                 row gone (+ keep_firing_for)
//!   (none) ──────────────▶ pending ───────────────────▶ firing ─────────────────────────────────▶ (none)
//!                            │  notify firing, then a reminder every `repeat` │   notify resolved
//!                            └─ row gone: (none), nobody is told ─────────────┘   (if firing was sent)
//! ```
//!
//! A silence, or an inhibiting rule's firing alert, holds back what a firing alert would send
//! (the first notification too) while it is in force; when it ends, what was held back goes out.
//! A rule dropped while its alert fires resolves the alert.
//!
//! A step that changes only an instance's values (the rule's row changed, its lifecycle did not)
//! is not urgent: the manager writes such changes at a bounded rate, the newest values winning.

use std::collections::BTreeMap;

use serde_json::{json, Value};
pub use tocsin_connectors::sink::fnv;
use tocsin_connectors::sink::{Notification, Transition};
use tocsin_sql::Silence;

use super::store::{Instance, State};
use super::RuleSpec;

/// What happened to an instance.
#[derive(Clone, Debug)]
pub enum Event {
    /// The rule has a row for it (it appeared, or its values may have changed).
    Present {
        labels: BTreeMap<String, String>,
        values: BTreeMap<String, Value>,
    },
    /// The rule's row for it is gone.
    Gone,
    /// Time passed: a timer is due, or a silence or an inhibiting alert came or went.
    Tick,
    /// Its rule was dropped.
    Dropped,
}

/// What a step decides.
#[derive(Default, Debug)]
pub struct Outcome {
    /// The instance to store (changed); `None` with `delete` false: nothing to write.
    pub put: Option<Instance>,
    /// `put` changes more than the instance's values: write it (and its row) now.
    pub urgent: bool,
    /// The instance is over: remove it.
    pub delete: bool,
    /// Notifications, each for every sink of the rule, in order.
    pub notify: Vec<Notification>,
    /// Rows for `tocsin_alert_events`: one per transition.
    pub events: Vec<Value>,
}

/// What a step knows besides the instance.
pub struct Context<'a> {
    pub spec: &'a RuleSpec,
    pub silences: &'a [(String, Silence)],
    pub now: i64,
    /// A rule this one names in `inhibit` fires with the same values of the labels they share.
    pub inhibited: bool,
}

impl Context<'_> {
    fn ms(d: std::time::Duration) -> i64 {
        d.as_millis() as i64
    }

    pub fn silenced(&self, i: &Instance) -> bool {
        silenced_by(self.silences, i, &self.spec.options.severity, self.now)
            .next()
            .is_some()
    }
}

/// The names of the silences in force at `now` that match `i` (of a rule of `severity`).
pub fn silenced_by<'a>(
    silences: &'a [(String, Silence)],
    i: &'a Instance,
    severity: &'a str,
    now: i64,
) -> impl Iterator<Item = &'a String> + 'a {
    let label = move |name: &str| match name {
        "rule" => Some(i.rule.clone()),
        "severity" => Some(severity.to_string()),
        _ => i.labels.get(name).cloned(),
    };
    silences
        .iter()
        .filter(move |(_, s)| s.active(now) && s.matches(&label))
        .map(|(n, _)| n)
}

/// One step of an instance's lifecycle.
pub fn step(cx: &Context, existing: Option<Instance>, event: Event) -> Outcome {
    let mut o = Outcome::default();
    match (event, existing) {
        (Event::Present { labels, values }, None) => {
            let i = Instance::pending(&cx.spec.name, labels, values, cx.now);
            o.events.push(row(cx, &i, "pending", cx.silenced(&i)));
            advance(cx, i, None, &mut o);
        }
        (Event::Present { values, .. }, Some(mut i)) => {
            let before = i.clone();
            i.values = values;
            i.gone_since = None;
            advance(cx, i, Some(before), &mut o);
        }
        (Event::Gone, Some(mut i)) => match i.state {
            State::Pending => resolve(cx, i, &mut o),
            State::Firing if cx.spec.options.keep_firing_for.is_zero() => resolve(cx, i, &mut o),
            State::Firing => {
                if i.gone_since.is_none() {
                    i.gone_since = Some(cx.now);
                    i.published = cx.now;
                    o.put = Some(i);
                    o.urgent = true;
                }
            }
        },
        (Event::Tick, Some(i)) => {
            let before = i.clone();
            advance(cx, i, Some(before), &mut o)
        }
        (Event::Dropped, Some(i)) => resolve(cx, i, &mut o),
        (_, None) => {}
    }
    o
}

/// Whether two states of an instance differ in nothing but their values.
fn same_but_values(a: &Instance, b: &Instance) -> bool {
    let a = Instance {
        values: Default::default(),
        published: 0,
        ..a.clone()
    };
    let b = Instance {
        values: Default::default(),
        published: 0,
        ..b.clone()
    };
    a == b
}

/// Moves an instance on by time: pending → firing, firing → resolved after `keep_firing_for`,
/// the first notification and reminders. `before`: the stored state (`None` for a new instance).
fn advance(cx: &Context, mut i: Instance, before: Option<Instance>, o: &mut Outcome) {
    let opts = &cx.spec.options;
    let now = cx.now;
    let silenced = cx.silenced(&i);
    let held = silenced || cx.inhibited;
    let mut event = None;
    // When the first notification counts as sent, for reminders: the moment it fired, when it
    // fires now.
    let mut sent_at = now;
    let fires_at = i.active_since + Context::ms(opts.r#for);
    if i.state == State::Pending && now >= fires_at {
        // It fired at its deadline, whatever step saw it first (a timer or a change of its
        // values), so that every replica stamps it alike.
        i.state = State::Firing;
        i.firing_since = Some(fires_at);
        sent_at = fires_at;
        event = Some("firing");
    }
    if i.state == State::Firing {
        if let Some(g) = i.gone_since {
            if now >= g + Context::ms(opts.keep_firing_for) {
                resolve(cx, i, o);
                return;
            }
        }
        if !held {
            if !i.notified {
                i.notified = true;
                i.last_notified = Some(sent_at);
                o.notify.push(notification(cx, &i, Transition::Firing));
            } else if i
                .last_notified
                .is_some_and(|t| now >= t + Context::ms(opts.repeat))
            {
                i.repeats += 1;
                i.last_notified = Some(now);
                o.notify.push(notification(cx, &i, Transition::Firing));
            }
        }
    }
    i.silenced = silenced;
    i.inhibited = cx.inhibited;
    if let Some(e) = event {
        let mut r = row(cx, &i, e, silenced);
        r["ts"] = json!(fires_at);
        o.events.push(r);
    }
    let urgent = match &before {
        None => true,
        Some(b) if *b == i => return,
        Some(b) => !same_but_values(b, &i),
    };
    i.published = now;
    o.put = Some(i);
    o.urgent = urgent;
}

/// The alert is over: a resolved notification if its firing one went out, an event, gone.
fn resolve(cx: &Context, i: Instance, o: &mut Outcome) {
    let silenced = cx.silenced(&i);
    if i.state == State::Firing && i.notified && !silenced && !cx.inhibited {
        o.notify.push(notification(cx, &i, Transition::Resolved));
    }
    o.events.push(row(cx, &i, "resolved", silenced));
    o.put = None;
    o.delete = true;
}

/// The next time something is due for an instance; `None`: nothing until an event.
pub fn deadline(cx: &Context, i: &Instance) -> Option<i64> {
    let opts = &cx.spec.options;
    let now = cx.now;
    match i.state {
        State::Pending => Some(i.active_since + Context::ms(opts.r#for)),
        State::Firing => {
            let silenced = cx.silenced(i);
            let held = silenced || cx.inhibited;
            if silenced != i.silenced || cx.inhibited != i.inhibited || (!i.notified && !held) {
                // A silence or an inhibiting alert came or went: show it, and send what it
                // held back.
                return Some(now);
            }
            let mut d = None::<i64>;
            let mut at = |t: i64| d = Some(d.map_or(t, |d| d.min(t)));
            if let Some(g) = i.gone_since {
                at(g + Context::ms(opts.keep_firing_for));
            }
            if let Some(t) = i.last_notified.filter(|_| !held) {
                // Reminders wait while a silence holds; its end is a deadline below.
                at(t + Context::ms(opts.repeat));
            }
            // A silence ending or starting changes what is sent.
            for (_, s) in cx.silences {
                for t in [s.starts_ms, s.until_ms] {
                    if t > now {
                        at(t);
                    }
                }
            }
            d
        }
    }
}

/// A notification about `i`; its id is the same for the same transition of the same alert.
fn notification(cx: &Context, i: &Instance, state: Transition) -> Notification {
    let opts = &cx.spec.options;
    let state_text = state.as_str();
    let labels_json = serde_json::to_string(&i.labels).unwrap_or_default();
    let id = fnv(&[
        &i.rule,
        &labels_json,
        state_text,
        &i.active_since.to_string(),
    ]);
    let text = |t: &Option<String>| {
        t.as_deref()
            .map(|t| render(t, i, state_text, &opts.severity))
            .unwrap_or_default()
    };
    Notification {
        id: format!("{id:016x}"),
        rule: i.rule.clone(),
        state,
        severity: opts.severity.clone(),
        labels: i.labels.clone(),
        values: i.values.clone(),
        summary: text(&opts.summary),
        description: text(&opts.description),
        active_since: i.active_since,
        firing_since: i.firing_since,
        resolved_at: (state == Transition::Resolved).then_some(cx.now),
        repeat: if state == Transition::Firing {
            i.repeats
        } else {
            0
        },
        valid_until: (state == Transition::Firing)
            .then(|| cx.now.saturating_add(2 * Context::ms(opts.repeat))),
    }
}

/// The row of `tocsin_alert_events` for a transition of an instance.
fn row(cx: &Context, i: &Instance, state: &str, silenced: bool) -> Value {
    let o = &cx.spec.options;
    json!({
        "rule": i.rule,
        "labels": serde_json::to_string(&i.labels).unwrap_or_default(),
        "state": state,
        "severity": o.severity,
        "summary": o.summary.as_deref().map(|t| render(t, i, state, &o.severity)).unwrap_or_default(),
        "description": o.description.as_deref().map(|t| render(t, i, state, &o.severity)).unwrap_or_default(),
        "values_json": serde_json::to_string(&i.values).unwrap_or_default(),
        "silenced": silenced,
        "inhibited": cx.inhibited,
        "active_since": i.active_since,
        "firing_since": i.firing_since,
        "ts": cx.now,
    })
}

/// A value as text: strings as they are, numbers with at most two decimals.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or_default();
            let s = format!("{x:.2}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        other => other.to_string(),
    }
}

/// Replaces `{{name}}` by the label or value of that name, or `rule`, `state`, `severity`.
/// Unknown names are left as they are, so a typo shows.
pub fn render(template: &str, i: &Instance, state: &str, severity: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        let v = match name {
            "rule" => Some(i.rule.clone()),
            "state" => Some(state.to_string()),
            "severity" => Some(severity.to_string()),
            _ => i
                .labels
                .get(name)
                .cloned()
                .or_else(|| i.values.get(name).map(value_text)),
        };
        match v {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sql::options::RuleOptions;

    const S: i64 = 1_000;
    const M: i64 = 60 * S;

    fn spec(options: &[(&str, &str)]) -> RuleSpec {
        RuleSpec {
            name: "hot".into(),
            options: RuleOptions::parse(
                options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .unwrap(),
            labels: vec!["host".into()],
        }
    }

    /// A silence of `host=a` from `starts` to `until` (ms).
    fn silence(starts: i64, until: i64) -> (String, Silence) {
        let (s, _) = Silence::parse(
            vec![
                ("matchers".into(), "host=a".into()),
                ("starts".into(), format!("{}ms", starts)),
                ("until".into(), format!("{}ms", until)),
            ],
            0,
        )
        .unwrap();
        ("quiet".into(), s)
    }

    fn row(v: f64) -> Event {
        Event::Present {
            labels: BTreeMap::from([("host".to_string(), "a".to_string())]),
            values: BTreeMap::from([("v".to_string(), json!(v))]),
        }
    }

    /// Runs the events at their times on one instance; each step as `state notifications`,
    /// e.g. `firing +firing#0`, `none +resolved`, `pending`.
    fn run(
        spec: &RuleSpec,
        silences: &[(String, Silence)],
        events: &[(i64, Event)],
    ) -> Vec<String> {
        let mut stored: Option<Instance> = None;
        let mut trace = Vec::new();
        for (now, event) in events {
            let cx = Context {
                spec,
                silences,
                now: *now,
                inhibited: false,
            };
            let o = step(&cx, stored.clone(), event.clone());
            if o.delete {
                stored = None;
            } else if let Some(i) = o.put {
                stored = Some(i);
            }
            let state = stored.as_ref().map_or("none", |i| i.state.as_str());
            let mut line = state.to_string();
            for n in &o.notify {
                line.push_str(&format!(" +{}#{}", n.state.as_str(), n.repeat));
            }
            trace.push(line);
        }
        trace
    }

    /// What a case is about, the rule's options, the silences, the events at their times and
    /// the trace they must give.
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        Vec<(String, Silence)>,
        Vec<(i64, Event)>,
        Vec<&'static str>,
    );

    #[test]
    fn transitions() {
        use Event::*;
        // (what, rule options, silences, events, expected trace)
        let cases: Vec<Case> = vec![
            (
                "for: pending until it has stayed 30s, then firing, resolved when the row goes",
                vec![("for", "30s")],
                vec![],
                vec![(0, row(1.0)), (29 * S, Tick), (30 * S, Tick), (40 * S, Gone)],
                vec!["pending", "pending", "firing +firing#0", "none +resolved#0"],
            ),
            (
                "for = 0s fires at once",
                vec![],
                vec![],
                vec![(0, row(1.0)), (S, Gone)],
                vec!["firing +firing#0", "none +resolved#0"],
            ),
            (
                "a flap inside for: nobody is told, and the next row starts over",
                vec![("for", "30s")],
                vec![],
                vec![(0, row(1.0)), (10 * S, Gone), (20 * S, row(2.0)), (49 * S, Tick), (50 * S, Tick)],
                vec!["pending", "none", "pending", "pending", "firing +firing#0"],
            ),
            (
                "values change without a new alert or notification",
                vec![],
                vec![],
                vec![(0, row(1.0)), (S, row(2.0)), (2 * S, row(2.0))],
                vec!["firing +firing#0", "firing", "firing"],
            ),
            (
                "keep_firing_for: a row back within it keeps the alert; gone for longer resolves it",
                vec![("keep_firing_for", "1m")],
                vec![],
                vec![
                    (0, row(1.0)),
                    (10 * S, Gone),
                    (30 * S, row(1.0)),
                    (40 * S, Gone),
                    (99 * S, Tick),
                    (100 * S, Tick),
                ],
                vec!["firing +firing#0", "firing", "firing", "firing", "firing", "none +resolved#0"],
            ),
            (
                "repeat: a reminder every 10 minutes while firing",
                vec![("repeat", "10m")],
                vec![],
                vec![(0, row(1.0)), (9 * M, Tick), (10 * M, Tick), (20 * M, Tick), (21 * M, Gone)],
                vec!["firing +firing#0", "firing", "firing +firing#1", "firing +firing#2", "none +resolved#0"],
            ),
            (
                "a silence holds back the first notification; its end sends it",
                vec![],
                vec![silence(0, 15 * M)],
                vec![(0, row(1.0)), (M, Tick), (15 * M, Tick), (16 * M, Gone)],
                vec!["firing", "firing", "firing +firing#0", "none +resolved#0"],
            ),
            (
                "a silence starting mid-fire holds back reminders and the resolution",
                vec![("repeat", "10m")],
                vec![silence(5 * M, 60 * M)],
                vec![(0, row(1.0)), (10 * M, Tick), (20 * M, Gone)],
                vec!["firing +firing#0", "firing", "none"],
            ),
            (
                "a pending alert that goes is never told",
                vec![("for", "1m")],
                vec![],
                vec![(0, row(1.0)), (30 * S, Gone)],
                vec!["pending", "none"],
            ),
            (
                "a rule dropped while its alert fires resolves it",
                vec![],
                vec![],
                vec![(0, row(1.0)), (S, Dropped)],
                vec!["firing +firing#0", "none +resolved#0"],
            ),
            (
                "a rule dropped while its alert is pending tells nobody",
                vec![("for", "1m")],
                vec![],
                vec![(0, row(1.0)), (S, Dropped)],
                vec!["pending", "none"],
            ),
        ];
        for (what, options, silences, events, want) in cases {
            assert_eq!(run(&spec(&options), &silences, &events), want, "{what}");
        }
    }

    #[test]
    fn restart_from_stored_state() {
        let s = spec(&[("for", "30s"), ("repeat", "10m")]);
        let at = |now| Context {
            spec: &s,
            silences: &[],
            now,
            inhibited: false,
        };
        // A pending alert stored before the restart keeps its start: it fires 30s after it
        // appeared, not after the restart.
        let pending = step(&at(0), None, row(1.0)).put.unwrap();
        let o = step(&at(20 * S), Some(pending.clone()), row(1.0));
        assert!(
            o.put.is_none() && o.notify.is_empty(),
            "the same row changes nothing"
        );
        assert_eq!(deadline(&at(20 * S), &pending), Some(30 * S));
        let firing = step(&at(30 * S), Some(pending), Event::Tick).put.unwrap();
        assert_eq!(firing.state, State::Firing);
        // A firing alert stored with its notification sent is not notified again when its
        // row comes back after the restart; its next reminder is where it was.
        let o = step(&at(5 * M), Some(firing.clone()), row(1.0));
        assert!(o.notify.is_empty() && o.put.is_none());
        assert_eq!(deadline(&at(5 * M), &firing), Some(30 * S + 10 * M));
        // Its row did not come back: resolved and told.
        let o = step(&at(6 * M), Some(firing), Event::Gone);
        assert!(o.delete);
        assert_eq!(o.notify.len(), 1);
        assert_eq!(o.notify[0].state, Transition::Resolved);
    }

    #[test]
    fn inhibition_holds_back_notifications_like_a_silence() {
        let s = spec(&[("repeat", "10m")]);
        let at = |now, inhibited| Context {
            spec: &s,
            silences: &[],
            now,
            inhibited,
        };
        // Inhibited from the start: it fires, shows as inhibited, and tells nobody.
        let o = step(&at(0, true), None, row(1.0));
        assert!(o.notify.is_empty() && o.urgent);
        let i = o.put.unwrap();
        assert_eq!(
            (i.state, i.inhibited, i.notified),
            (State::Firing, true, false)
        );
        assert_eq!(
            deadline(&at(M, true), &i),
            None,
            "nothing is due while held back and nothing else waits"
        );
        // The inhibiting alert resolves: the alert is due at once, and its firing goes out.
        assert_eq!(deadline(&at(2 * M, false), &i), Some(2 * M));
        let o = step(&at(2 * M, false), Some(i), Event::Tick);
        assert_eq!(o.notify.len(), 1);
        assert_eq!(o.notify[0].state, Transition::Firing);
        let i = o.put.unwrap();
        assert!(!i.inhibited && i.notified);
        // Inhibited again while firing: reminders and the resolution are held back.
        let o = step(&at(3 * M, true), Some(i), Event::Tick);
        let i = o.put.unwrap();
        assert!(o.notify.is_empty() && i.inhibited);
        let o = step(&at(15 * M, true), Some(i.clone()), Event::Tick);
        assert!(o.notify.is_empty(), "no reminder while inhibited");
        let o = step(&at(16 * M, true), Some(i), Event::Gone);
        assert!(
            o.delete && o.notify.is_empty(),
            "no resolution while inhibited"
        );
    }

    #[test]
    fn value_changes_alone_are_not_urgent() {
        let s = spec(&[("for", "30s")]);
        let at = |now| Context {
            spec: &s,
            silences: &[],
            now,
            inhibited: false,
        };
        let i = step(&at(0), None, row(1.0)).put.unwrap();
        let o = step(&at(S), Some(i.clone()), row(2.0));
        let changed = o.put.unwrap();
        assert!(!o.urgent, "only the values changed");
        assert_eq!(changed.values["v"], json!(2.0));
        assert_eq!(changed.published, S, "its row's updated_at");
        let o = step(&at(30 * S), Some(changed), row(3.0));
        assert!(o.urgent, "it fired at the same time");
        assert_eq!(o.put.unwrap().state, State::Firing);
        let o = step(&at(2 * S), Some(i), row(1.0));
        assert!(o.put.is_none(), "the same row changes nothing");
    }

    #[test]
    fn notification_ids_are_stable_and_texts_rendered() {
        let s = spec(&[("summary", "{{v}} on {{host}} ({{severity}}, {{bogus}})")]);
        let cx = Context {
            spec: &s,
            silences: &[],
            now: 0,
            inhibited: false,
        };
        let a = step(&cx, None, row(93.456));
        let b = step(&cx, None, row(10.0));
        let (a, b) = (&a.notify[0], &b.notify[0]);
        assert_eq!(a.id, b.id, "the same transition of the same alert");
        assert_eq!(a.summary, "93.46 on a (warning, {{bogus}})");
        let resolved = step(
            &cx,
            Some(step(&cx, None, row(1.0)).put.unwrap()),
            Event::Gone,
        );
        assert_ne!(resolved.notify[0].id, a.id);
    }
}
