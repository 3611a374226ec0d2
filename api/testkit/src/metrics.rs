//! Reading a service's Prometheus metrics in tests: scraped over plain HTTP as a
//! Prometheus server would, and single samples looked up by series.

// Test helpers fail by panicking, with what was expected.
#![allow(clippy::expect_used, clippy::panic)]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

/// `GET /metrics` over HTTP/1.0; the body (OpenMetrics text). Panics on anything but 200.
pub fn scrape(addr: SocketAddr) -> String {
    try_scrape(addr).expect("the metrics address answers")
}

/// As [`scrape`], `None` while nothing listens there yet (a service starting).
pub fn try_scrape(addr: SocketAddr) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("request sent");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer read");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Some(body.to_owned())
}

/// The value of the sample whose line is `series VALUE` (name and labels exactly).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A series and what its value must satisfy.
pub type Want<'a> = (&'a str, fn(f64) -> bool);

/// Scrapes until every [`Want`] holds, for up to 10 s; the last text.
pub fn wait_for(addr: SocketAddr, want: &[Want<'_>]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = try_scrape(addr).unwrap_or_default();
        if want
            .iter()
            .all(|(s, holds)| sample(&text, s).is_some_and(holds))
        {
            return text;
        }
        let names: Vec<&str> = want.iter().map(|(s, _)| *s).collect();
        assert!(Instant::now() < deadline, "want {names:?} in\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port free on 127.0.0.1 now (for a service's `metrics_listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
