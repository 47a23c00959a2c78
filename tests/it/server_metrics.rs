//! `/healthz` and `/metrics` (SERVER.md "Monitoring"): a real server,
//! real pushes and pulls with the real client, then the exposition is
//! scraped over HTTP, parsed line by line and its figures checked; and
//! `--metrics` decides who may read it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::driver::http_get;
use crate::support::*;

/// One scrape: every sample (`name{labels}` as written) and every
/// family's TYPE.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn get(&self, sample: &str) -> f64 {
        *self
            .samples
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample}; have {:?}", self.samples.keys()))
    }
}

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// The family a sample belongs to (a histogram's series carry suffixes).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    name
}

/// Parses the text exposition format 0.0.4, failing on any line that is
/// not a HELP, a TYPE or a sample of a family typed before it.
fn parse(text: &str) -> Scrape {
    let mut s = Scrape {
        samples: HashMap::new(),
        types: HashMap::new(),
    };
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name) && !help.is_empty(), "bad HELP: {line}");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "bad TYPE: {line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(
                s.types.insert(name.into(), kind.into()).is_none(),
                "twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let name = series.split('{').next().unwrap();
        assert!(is_name(name), "bad sample name: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels: {line}"));
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(is_name(k) && v.len() >= 2, "bad label: {line}");
                assert!(v.starts_with('"') && v.ends_with('"'), "unquoted: {line}");
            }
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let family = family_of(name, &s.types);
        let kind = s
            .types
            .get(family)
            .unwrap_or_else(|| panic!("untyped: {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "a counter without _total: {line}");
        }
        assert!(
            s.samples.insert(series.into(), v).is_none(),
            "twice: {line}"
        );
    }
    s
}

/// GET /metrics, checked to be the 0.0.4 text format.
fn scrape(addr: &str) -> Scrape {
    let (status, head, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(&String::from_utf8(body).unwrap())
}

/// Scrapes until `done` holds (a session's counters move when its server
/// side has ended, a moment after the client exits), at most 15 s.
fn scrape_until(addr: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = scrape(addr);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn healthz_is_ok() {
    let f = Fixture::start();
    let (status, head, body) = http_get(&f.server().addr, "/healthz");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain")
    );
    assert_eq!(String::from_utf8_lossy(&body).trim(), "ok");
}

#[test]
fn push_and_pull_are_counted_by_namespace() {
    let f = Fixture::start();
    let addr = f.server().addr.clone();
    f.make("a.db", 2000);
    f.first_push("a.db", "team/a.db");
    assert_ok(&run(&mut f.admin_cmd(&["team/a.db", "copy.db"])));

    let s = scrape_until(&addr, "the pull counted", |s| {
        s.get("sqlrsync_pulls_total{namespace=\"team\"}") == 1.0
    });
    assert_eq!(s.get("sqlrsync_pushes_total{namespace=\"team\"}"), 1.0);
    assert_eq!(s.get("sqlrsync_push_errors_total{namespace=\"team\"}"), 0.0);
    assert_eq!(s.get("sqlrsync_pull_errors_total{namespace=\"team\"}"), 0.0);
    assert!(s.get("sqlrsync_received_bytes_total{namespace=\"team\"}") > 100_000.0);
    assert!(s.get("sqlrsync_sent_bytes_total{namespace=\"team\"}") > 100_000.0);
    for h in [
        "sqlrsync_push_commit_duration_seconds",
        "sqlrsync_pull_duration_seconds",
    ] {
        assert_eq!(s.types[h], "histogram");
        assert_eq!(s.get(&format!("{h}_count")), 1.0, "{h}");
        assert_eq!(s.get(&format!("{h}_bucket{{le=\"+Inf\"}}")), 1.0, "{h}");
        assert!(s.get(&format!("{h}_sum")) > 0.0, "{h}");
    }
    assert_eq!(s.get("sqlrsync_store_replicas"), 1.0);
    assert_eq!(s.get("sqlrsync_store_versions"), 1.0);
    assert!(s.get("sqlrsync_store_latest_pages") > 10.0);
    assert!(s.get("sqlrsync_store_disk_bytes") > 100_000.0);
    let s = scrape_until(&addr, "every session gauge back at 0", |s| {
        ["push", "pull", "subscribe", "download"]
            .iter()
            .all(|k| s.get(&format!("sqlrsync_sessions{{kind=\"{k}\"}}")) == 0.0)
    });
    assert_eq!(s.types["sqlrsync_sessions"], "gauge");

    // A pull of a replica that is not there, with a key: an error of the
    // namespace, and no pull more.
    let o = run(&mut f.admin_cmd(&["team/missing.db", "m.db"]));
    assert!(!o.status.success(), "{}", stderr(&o));
    let s = scrape_until(&addr, "the failed pull counted", |s| {
        s.get("sqlrsync_pull_errors_total{namespace=\"team\"}") == 1.0
    });
    assert_eq!(s.get("sqlrsync_pulls_total{namespace=\"team\"}"), 1.0);
    assert_eq!(s.get("sqlrsync_pull_duration_seconds_count"), 1.0);
}

#[test]
fn metrics_off_is_not_found() {
    let f = Fixture::with("team", &["--metrics", "off"]);
    let (status, _, _) = http_get(&f.server().addr, "/metrics");
    assert_eq!(status, 404);
    let (status, _, _) = http_get(&f.server().addr, "/healthz");
    assert_eq!(status, 200);
}

/// This machine's address on its default route, if it has one that is
/// not loopback (connecting a UDP socket sends nothing).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[test]
fn metrics_are_for_loopback_clients_unless_public() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIP: no non-loopback address to be a remote client from");
        return;
    };
    let listen = format!("{ip}:0");
    let local = Fixture::with("team", &["--listen", &listen]);
    let (status, _, body) = http_get(&local.server().addr, "/metrics");
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("--metrics public"));
    let (status, _, _) = http_get(&local.server().addr, "/healthz");
    assert_eq!(status, 200);

    let public = Fixture::with("team", &["--listen", &listen, "--metrics", "public"]);
    let s = scrape(&public.server().addr);
    assert_eq!(s.get("sqlrsync_store_replicas"), 0.0);
}
