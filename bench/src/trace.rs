//! `letstalk-bench messaging --trace`: where one message's time goes. Both daemons log
//! their debug events of target `letstalkd::path` (ids and stage names only, never
//! content), each line stamped with the wall clock to the microsecond; this module reads
//! those logs after the latency run and sets every stage beside the moment the bench
//! called `messages.send` and the moment bob's UI read `message.received`.
//!
//! The stages, on alice: `accepted` (the message row and its outbox row written, inside
//! the accepting transaction), `committed` (that transaction synced: `messages.send`
//! answers), `encrypted`, `handed` (to the relay link), `relay_stored` (the relay's
//! answer: stored in its mailbox), `sent` (the outbox row dropped, the message `sent`);
//! on bob: `pushed` (the push read from the link), `decrypted`, `received` (its
//! transaction synced), then the bench's own `UI read`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The log filter that turns the path's events on, and nothing else below `warn`.
pub(crate) const DAEMON_LOG: &str = "warn,letstalkd::path=debug";

const DAY_US: i64 = 86_400_000_000;

/// One message of the latency run: its id and the bench's wall-clock moments, µs since
/// the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    pub(crate) message_id: String,
    pub(crate) sent_us: i64,
    pub(crate) read_us: i64,
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One stage of the path as the logs show it.
#[derive(Debug)]
struct Line<'a> {
    /// µs since midnight UTC.
    at: i64,
    stage: &'a str,
    fields: BTreeMap<&'a str, &'a str>,
}

/// `2026-12-06T20:18:48.123456Z DEBUG letstalkd::path: stage key=value …`
fn parse(line: &str) -> Option<Line<'_>> {
    let mut words = line.split_whitespace();
    let ts = words.next()?;
    let time = ts.get(11..)?.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.')?;
    let mut hms = hms.split(':').map(str::parse::<i64>);
    let (h, m, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let frac = frac.get(..6)?.parse::<i64>().ok()?;
    let at = ((h * 60 + m) * 60 + s) * 1_000_000 + frac;
    words.next()?;
    if words.next()? != "letstalkd::path:" {
        return None;
    }
    let stage = words.next()?;
    let fields = words.filter_map(|w| w.split_once('=')).collect();
    Some(Line { at, stage, fields })
}

/// `to - from` for two times of day (µs since midnight), across one midnight.
fn since(from: i64, to: i64) -> i64 {
    let d = (to - from).rem_euclid(DAY_US);
    if d > DAY_US / 2 { d - DAY_US } else { d }
}

/// The stages in path order; `on_path` is false for the ones beside it (the answer to
/// `messages.send`, the outbox row dropped after the relay's answer).
const STAGES: &[(&str, &str, bool)] = &[
    ("accepted", "alice: message and outbox rows written", true),
    ("committed", "alice: accepted and synced (send answered)", false),
    ("encrypted", "alice: encrypted", true),
    ("handed", "alice: handed to the relay link", true),
    ("relay_stored", "alice: relay answered (stored)", false),
    ("sent", "alice: marked sent (synced)", false),
    ("pushed", "bob: push read from the link", true),
    ("decrypted", "bob: decrypted", true),
    ("received", "bob: stored and synced", true),
    ("ui", "bob's UI read message.received", true),
];

/// Prints the median moment of every stage after `messages.send` was called, and the
/// median step from the previous stage on the path.
pub(crate) fn print_breakdown(stamps: &[Stamp], alice_log: &str, bob_log: &str) {
    let alice: Vec<Line<'_>> = alice_log.lines().filter_map(parse).collect();
    let bob: Vec<Line<'_>> = bob_log.lines().filter_map(parse).collect();
    let mut relay_of = BTreeMap::new();
    let mut by_msg: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut by_relay: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut sent_at = Vec::new();
    for l in alice.iter().chain(&bob) {
        if let Some(msg) = l.fields.get("msg") {
            by_msg.entry((msg, l.stage)).or_insert(l.at);
            if let Some(relay) = l.fields.get("relay") {
                relay_of.insert(*msg, *relay);
            }
        }
        if let Some(relay) = l.fields.get("relay") {
            by_relay.entry((relay, l.stage)).or_insert(l.at);
        }
        if l.stage == "sent" {
            sent_at.push(l.at);
        }
    }
    let mut offsets: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut steps: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut complete = 0usize;
    for s in stamps {
        let day = |us: i64| us.rem_euclid(DAY_US);
        let t0 = day(s.sent_us);
        let Some(relay) = relay_of.get(s.message_id.as_str()) else { continue };
        let mut at: BTreeMap<&str, i64> = BTreeMap::new();
        for (stage, _, _) in STAGES {
            let t = match *stage {
                "ui" => Some(day(s.read_us)),
                "accepted" | "committed" => by_msg.get(&(s.message_id.as_str(), stage)).copied(),
                "sent" => by_relay
                    .get(&(relay, "relay_stored"))
                    .and_then(|stored| sent_at.iter().copied().find(|t| since(*stored, *t) >= 0)),
                _ => by_relay.get(&(relay, stage)).copied(),
            };
            if let Some(t) = t {
                at.insert(stage, t);
            }
        }
        if at.len() < STAGES.len() {
            continue;
        }
        complete += 1;
        let mut prev = t0;
        for (stage, _, on_path) in STAGES {
            let t = at[stage];
            offsets.entry(stage).or_default().push(since(t0, t));
            if *on_path {
                steps.entry(stage).or_default().push(since(prev, t));
                prev = t;
            }
        }
    }
    println!(
        "== Where the time goes (--trace: median over {complete} of {} messages) ==",
        stamps.len()
    );
    if complete == 0 {
        println!("  no complete trace: was letstalkd built from this tree?");
        return;
    }
    println!("  {:<46} {:>10} {:>10}", "stage", "at", "step");
    for (stage, what, on_path) in STAGES {
        let at = median(offsets.get(stage));
        let step = if *on_path { fmt_us(median(steps.get(stage))) } else { "(beside)".into() };
        println!("  {what:<46} {:>10} {step:>10}", fmt_us(at));
    }
    println!(
        "  (\"at\": since messages.send was called; \"step\": since the stage before on the path; \
         clocks are one machine's)"
    );
    println!();
}

fn median(v: Option<&Vec<i64>>) -> i64 {
    let Some(v) = v else { return 0 };
    let mut v = v.clone();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn fmt_us(us: i64) -> String {
    let d = Duration::from_micros(us.unsigned_abs());
    let sign = if us < 0 { "-" } else { "" };
    format!("{sign}{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_path_line() {
        let l =
            parse("2026-12-06T20:18:48.123456Z DEBUG letstalkd::path: accepted msg=m1 relay=r1")
                .unwrap();
        assert_eq!(l.at, ((20 * 60 + 18) * 60 + 48) * 1_000_000 + 123_456);
        assert_eq!(l.stage, "accepted");
        assert_eq!(l.fields.get("relay"), Some(&"r1"));
        assert!(parse("2026-12-06T20:18:48.123456Z  WARN letstalkd::sender: x").is_none());
        assert_eq!(since(DAY_US - 10, 5), 15);
        assert_eq!(since(5, DAY_US - 10), -15);
    }
}
