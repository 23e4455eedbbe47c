//! The metrics Portcullis keeps, in one place: their names, help texts and labels, and
//! the Prometheus recorder that renders them for `/metrics`.
//!
//! Labels are low-cardinality by design: listener and backend names come from the
//! config, reasons and results from fixed sets; no client address is ever a label.
//! Messages are also counted by the minute for the status page ([`crate::activity`]).

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub(crate) const CONNECTIONS: &str = "portcullis_connections_total";
pub(crate) const SESSIONS_OPEN: &str = "portcullis_sessions_open";
pub(crate) const SESSIONS: &str = "portcullis_sessions_total";
pub(crate) const RELAY_REFUSALS: &str = "portcullis_relay_refusals_total";
pub(crate) const MESSAGES: &str = "portcullis_messages_total";
pub(crate) const RECIPIENTS: &str = "portcullis_recipients_total";
pub(crate) const BYTES: &str = "portcullis_client_bytes_total";
pub(crate) const BACKEND_ERRORS: &str = "portcullis_backend_errors_total";
pub(crate) const BACKEND_UP: &str = "portcullis_backend_up";
pub(crate) const BACKEND_CHECKS: &str = "portcullis_backend_checks_total";
pub(crate) const BACKEND_REPLY_SECONDS: &str = "portcullis_backend_reply_seconds";
pub(crate) const RELOADS: &str = "portcullis_reloads_total";
pub(crate) const LIMIT_REFUSALS: &str = "portcullis_limit_refusals_total";
pub(crate) const TLS_HANDSHAKES: &str = "portcullis_tls_handshakes_total";
pub(crate) const AUTH: &str = "portcullis_auth_total";
pub(crate) const LOG_SUPPRESSED: &str = "portcullis_log_lines_suppressed_total";
pub(crate) const DNSBL_LOOKUPS: &str = "portcullis_dnsbl_lookups_total";
pub(crate) const DNSBL_VERDICTS: &str = "portcullis_dnsbl_verdicts_total";
pub(crate) const STORE_ERRORS: &str = "portcullis_store_errors_total";
pub(crate) const STORE_UP: &str = "portcullis_store_up";
pub(crate) const MILTER_VERDICTS: &str = "portcullis_milter_verdicts_total";
pub(crate) const MILTER_ERRORS: &str = "portcullis_milter_errors_total";
pub(crate) const MILTER_SECONDS: &str = "portcullis_milter_message_seconds";
pub(crate) const TLS_CERTIFICATE_EXPIRY: &str = "portcullis_tls_certificate_expiry_timestamp_seconds";
pub(crate) const ACME_ORDER_FAILURES: &str = "portcullis_acme_order_failures_total";
pub(crate) const RECIPIENT_LOOKUPS: &str = "portcullis_recipient_lookups_total";
pub(crate) const RECIPIENT_LOOKUP_SECONDS: &str = "portcullis_recipient_lookup_seconds";

/// Backend reply latency buckets, in seconds: a local MTA answers in well under a
/// millisecond, a content-scanning one at end of data in seconds.
const REPLY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Recipient lookup buckets, in seconds: a file or cache answers in microseconds, a
/// directory on the LAN in about a millisecond, one that fails at the timeout in seconds.
const LOOKUP_BUCKETS: &[f64] =
    &[0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// The process-wide recorder, installed on first use. Metrics recorded before it is
/// installed are lost, so the server installs it before it accepts anything.
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(BACKEND_REPLY_SECONDS.into()), REPLY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MILTER_SECONDS.into()), REPLY_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(RECIPIENT_LOOKUP_SECONDS.into()), LOOKUP_BUCKETS))
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's); then
        // ours renders nothing, which is better than failing to serve.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// The page `/metrics` serves, in Prometheus' text format.
pub(crate) fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_counter!(
        CONNECTIONS,
        "Client connections by listener, verdict (accepted, rejected, limited, untrusted) and deciding rule"
    );
    describe_gauge!(SESSIONS_OPEN, "Client sessions open now");
    describe_counter!(SESSIONS, "Client sessions ended, by listener and how they ended");
    describe_counter!(RELAY_REFUSALS, "Recipients refused by the relay policy, by listener and deciding reason");
    describe_counter!(
        MESSAGES,
        "Messages by outcome: delivered (backend accepted), refused (by the backend), rejected (by us), failed (backend trouble)"
    );
    describe_counter!(
        RECIPIENTS,
        "Recipients by outcome: accepted or refused by the backend, unknown (recipient validation, 550) or deferred (its source unavailable, 451)"
    );
    describe_counter!(BYTES, Unit::Bytes, "Bytes read from (in) and written to (out) clients");
    describe_counter!(
        BACKEND_ERRORS,
        "Backend failures by backend, stage (connect, MAIL, RCPT, DATA, end of data, ...) and error (unreachable, out_of_step, timeout, closed, ...)"
    );
    describe_gauge!(BACKEND_UP, "1 when the backend's health checks pass, 0 when it is considered down");
    describe_counter!(BACKEND_CHECKS, "Backend health checks by backend and result");
    describe_histogram!(
        BACKEND_REPLY_SECONDS,
        Unit::Seconds,
        "Time from the end of a message's data to the backend's reply (its verdict on the message), by backend"
    );
    describe_counter!(RELOADS, "Configuration reloads by result (ok, failed)");
    describe_counter!(LIMIT_REFUSALS, "Refusals by the limit that was reached");
    describe_counter!(TLS_HANDSHAKES, "Client TLS handshakes by listener and result");
    describe_counter!(AUTH, "SMTP AUTH attempts by listener and result (success, failure, deferred)");
    describe_counter!(LOG_SUPPRESSED, "Repeated log lines left out by the log rate limit");
    describe_counter!(
        DNSBL_LOOKUPS,
        "DNS list lookups by zone and result (listed, not_listed, error_code: the list refused us, lookup_failed)"
    );
    describe_counter!(
        DNSBL_VERDICTS,
        "Clients whose DNS list score reached the threshold, by listener and action (reject, enforce, log)"
    );
    describe_counter!(STORE_ERRORS, "Calls to the shared store (Redis) that failed or timed out; local limits applied");
    describe_counter!(
        MILTER_VERDICTS,
        "Content filter answers by filter, step (connect, helo, mail, rcpt, data, eom, ...) and verdict"
    );
    describe_counter!(
        MILTER_ERRORS,
        "Content filters that failed (unreachable, timeout, closed, protocol) and had their default_action applied"
    );
    describe_histogram!(
        MILTER_SECONDS,
        Unit::Seconds,
        "Time a filter took over a whole message (headers to its verdict)"
    );
    describe_counter!(
        RECIPIENT_LOOKUPS,
        "Recipient validation lookups by table, source (file, ldap, cache, store) and result (known, unknown, failed)"
    );
    describe_histogram!(RECIPIENT_LOOKUP_SECONDS, Unit::Seconds, "Time one recipient lookup took, by table and source");
    describe_gauge!(STORE_UP, "1 while the shared store answers, 0 while local limits stand in for it");
    describe_gauge!(
        TLS_CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "When the certificate served now expires (Unix time), by certificate name ([acme] domains' first)"
    );
    describe_counter!(ACME_ORDER_FAILURES, "Certificate orders ([acme]) that failed and will be retried");
}

// === recording, one function per event so names and labels stay consistent ===

/// A metric whose labels are all fixed, looked up once (after the recorder is in
/// place) and kept: a lookup hashes the key and allocates its labels, which costs more
/// than the increment, and these are counted for every session and message.
macro_rules! fixed {
    ($ty:ty, $make:expr) => {{
        static FIXED: OnceLock<$ty> = OnceLock::new();
        FIXED.get_or_init(|| {
            handle();
            $make
        })
    }};
}

/// Handles of metrics whose labels come from the config (listener, backend and rule
/// names), kept per thread: one connection's few counters are then found by comparing a
/// few short strings instead of building, hashing and allocating a key each time.
/// Bounded: past [`KEPT_HANDLES`] the oldest is forgotten (looked up again if needed).
const KEPT_HANDLES: usize = 64;

struct Kept<T> {
    name: &'static str,
    labels: [String; 3],
    handle: T,
}

thread_local! {
    static COUNTERS: std::cell::RefCell<Vec<Kept<metrics::Counter>>> = const { std::cell::RefCell::new(Vec::new()) };
    static HISTOGRAMS: std::cell::RefCell<Vec<Kept<metrics::Histogram>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn kept<T: Clone>(
    store: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Kept<T>>>>,
    name: &'static str,
    labels: [&str; 3],
    make: impl FnOnce() -> T,
) -> T {
    store.with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some(k) = kept.iter().find(|k| k.name == name && k.labels.iter().zip(labels).all(|(a, b)| a == b)) {
            return k.handle.clone();
        }
        // The recorder first: a handle made before it would count nowhere, for good.
        self::handle();
        let handle = make();
        if kept.len() == KEPT_HANDLES {
            kept.remove(0);
        }
        kept.push(Kept { name, labels: labels.map(str::to_string), handle: handle.clone() });
        handle
    })
}

pub(crate) fn connection(listener: &str, verdict: &'static str, rule: &str) {
    kept(
        &COUNTERS,
        CONNECTIONS,
        [listener, verdict, rule],
        || counter!(CONNECTIONS, "listener" => listener.to_string(), "verdict" => verdict, "rule" => rule.to_string()),
    )
    .increment(1);
}

fn sessions_open() -> &'static metrics::Gauge {
    fixed!(metrics::Gauge, gauge!(SESSIONS_OPEN))
}

pub(crate) fn session_opened() {
    sessions_open().increment(1.0);
}

pub(crate) fn session_closed(listener: &str, outcome: &'static str, bytes_in: u64, bytes_out: u64) {
    sessions_open().decrement(1.0);
    kept(
        &COUNTERS,
        SESSIONS,
        [listener, outcome, ""],
        || counter!(SESSIONS, "listener" => listener.to_string(), "outcome" => outcome),
    )
    .increment(1);
    fixed!(metrics::Counter, counter!(BYTES, "direction" => "in")).increment(bytes_in);
    fixed!(metrics::Counter, counter!(BYTES, "direction" => "out")).increment(bytes_out);
}

pub(crate) fn relay_refused(listener: &str, reason: &str) {
    counter!(RELAY_REFUSALS, "listener" => listener.to_string(), "reason" => reason.to_string()).increment(1);
}

pub(crate) fn message(outcome: &'static str) {
    crate::activity::message(outcome);
    match outcome {
        "delivered" => fixed!(metrics::Counter, counter!(MESSAGES, "outcome" => "delivered")).increment(1),
        "refused" => fixed!(metrics::Counter, counter!(MESSAGES, "outcome" => "refused")).increment(1),
        other => counter!(MESSAGES, "outcome" => other).increment(1),
    }
}

pub(crate) fn recipient(outcome: &'static str) {
    match outcome {
        "accepted" => fixed!(metrics::Counter, counter!(RECIPIENTS, "outcome" => "accepted")).increment(1),
        "refused" => fixed!(metrics::Counter, counter!(RECIPIENTS, "outcome" => "refused")).increment(1),
        other => counter!(RECIPIENTS, "outcome" => other).increment(1),
    }
}

pub(crate) fn backend_error(backend: &str, stage: &'static str, error: &'static str) {
    counter!(BACKEND_ERRORS, "backend" => backend.to_string(), "stage" => stage, "error" => error).increment(1);
}

pub(crate) fn backend_up(backend: &str, up: bool) {
    gauge!(BACKEND_UP, "backend" => backend.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn backend_check(backend: &str, ok: bool) {
    counter!(BACKEND_CHECKS, "backend" => backend.to_string(), "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}

/// A handle for one backend connection's reply times: looked up once per connection,
/// not per reply.
pub(crate) fn backend_reply_timer(backend: &str) -> metrics::Histogram {
    kept(
        &HISTOGRAMS,
        BACKEND_REPLY_SECONDS,
        [backend, "", ""],
        || histogram!(BACKEND_REPLY_SECONDS, "backend" => backend.to_string()),
    )
}

pub(crate) fn record_reply(timer: &metrics::Histogram, took: Duration) {
    timer.record(took.as_secs_f64());
}

pub(crate) fn reload(ok: bool) {
    counter!(RELOADS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

pub(crate) fn limit_refused(limit: &'static str) {
    counter!(LIMIT_REFUSALS, "limit" => limit).increment(1);
}

pub(crate) fn tls_handshake(listener: &str, result: &'static str) {
    counter!(TLS_HANDSHAKES, "listener" => listener.to_string(), "result" => result).increment(1);
}

pub(crate) fn auth(listener: &str, result: &'static str) {
    counter!(AUTH, "listener" => listener.to_string(), "result" => result).increment(1);
}

/// One DNS list answer; `result`: "listed", "not_listed", "error_code", "lookup_failed".
pub(crate) fn dnsbl_lookup(zone: &str, result: &'static str) {
    counter!(DNSBL_LOOKUPS, "zone" => zone.to_string(), "result" => result).increment(1);
}

pub(crate) fn dnsbl_verdict(listener: &str, action: &'static str) {
    counter!(DNSBL_VERDICTS, "listener" => listener.to_string(), "action" => action).increment(1);
}

pub(crate) fn store_error() {
    counter!(STORE_ERRORS).increment(1);
}

pub(crate) fn store_up(up: bool) {
    gauge!(STORE_UP).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn milter_verdict(milter: &str, step: &'static str, verdict: &'static str) {
    counter!(MILTER_VERDICTS, "milter" => milter.to_string(), "step" => step, "verdict" => verdict).increment(1);
}

pub(crate) fn milter_error(milter: &str, kind: &'static str) {
    counter!(MILTER_ERRORS, "milter" => milter.to_string(), "error" => kind).increment(1);
}

pub(crate) fn milter_time(milter: &str, took: Duration) {
    histogram!(MILTER_SECONDS, "milter" => milter.to_string()).record(took.as_secs_f64());
}

/// The certificate served under `name` now expires at `unix_seconds`.
pub(crate) fn tls_certificate_expiry(name: &str, unix_seconds: f64) {
    gauge!(TLS_CERTIFICATE_EXPIRY, "name" => name.to_string()).set(unix_seconds);
}

pub(crate) fn acme_order_failed() {
    counter!(ACME_ORDER_FAILURES).increment(1);
}

pub(crate) fn log_suppressed(n: u64) {
    counter!(LOG_SUPPRESSED).increment(n);
}

/// One recipient lookup; `source`: "file", "ldap", "cache", "store"; `result`: "known",
/// "unknown", "failed".
pub(crate) fn recipient_lookup(table: &str, source: &'static str, result: &'static str, took: Duration) {
    counter!(RECIPIENT_LOOKUPS, "table" => table.to_string(), "source" => source, "result" => result).increment(1);
    histogram!(RECIPIENT_LOOKUP_SECONDS, "table" => table.to_string(), "source" => source).record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_handles_count_where_looked_up_ones_do_and_stay_bounded() {
        for _ in 0..3 {
            connection("kept-test", "accepted", "default");
        }
        // Past the bound, older handles are forgotten and looked up again: still counted.
        for i in 0..(KEPT_HANDLES + 10) {
            connection("kept-test", "rejected", &format!("rule{i}"));
        }
        connection("kept-test", "accepted", "default");
        let text = render();
        let line = |rule: &str, verdict: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(CONNECTIONS)
                        && l.contains("listener=\"kept-test\"")
                        && l.contains(&format!("rule=\"{rule}\""))
                        && l.contains(verdict)
                })
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
        };
        assert_eq!(line("default", "accepted").as_deref(), Some("4"));
        assert_eq!(line("rule0", "rejected").as_deref(), Some("1"));
        assert!(COUNTERS.with(|k| k.borrow().len()) <= KEPT_HANDLES);
    }
}
