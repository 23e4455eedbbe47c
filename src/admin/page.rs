//! The status page (`GET /`): what HAProxy's stats page is to its users. Server-side
//! HTML that needs no script and refreshes itself; everything on it is read from the
//! live config, the backends' state, the metrics (read back from `/metrics`' own text,
//! see [`super::samples`]) and the activity rings ([`crate::activity`]).
//!
//! Nothing secret is on it: no token, no password, no message content. Client
//! addresses (the last refusals) are shown only where the endpoint is already private:
//! bound to loopback, or asked with the token (`Authorization: Bearer`, or a browser's
//! Basic login with the token as the password).

use super::Status;
use super::samples::Samples;
use crate::activity::{self, Minute, Refusal, Reload};
use crate::config::ListenerTls;
use crate::metrics;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// Seconds between the page's own refreshes.
pub(crate) const REFRESH: u32 = 10;

/// Everything the page shows, gathered at once.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) hostname: String,
    pub(crate) started: SystemTime,
    pub(crate) uptime: Duration,
    pub(crate) listeners: Vec<ListenerRow>,
    pub(crate) backends: Vec<BackendRow>,
    pub(crate) messages: Vec<(String, f64)>,
    pub(crate) recipients: Vec<(String, f64)>,
    pub(crate) history: Vec<Minute>,
    pub(crate) bans: usize,
    pub(crate) limits: Vec<(String, f64)>,
    pub(crate) dns_lists: Vec<(String, f64)>,
    pub(crate) store_up: Option<bool>,
    pub(crate) filters: Vec<FilterRow>,
    pub(crate) recipient_tables: Vec<TableRow>,
    /// `[acme]`: the certificate's name and when it expires (none yet: `None`).
    pub(crate) certificate: Option<(String, Option<SystemTime>)>,
    pub(crate) reload: Option<Reload>,
    /// The refusals shown (after the filter), newest first.
    pub(crate) refusals: Vec<Refusal>,
    /// Refusals kept in all.
    pub(crate) refusals_kept: usize,
    /// `None`: addresses are hidden here.
    pub(crate) client_filter: Option<String>,
    pub(crate) show_clients: bool,
}

#[derive(Debug)]
pub(crate) struct ListenerRow {
    pub(crate) name: String,
    pub(crate) bind: String,
    pub(crate) tls: &'static str,
    pub(crate) proxy_protocol: bool,
    pub(crate) open: f64,
    pub(crate) accepted: f64,
    /// Connections refused, by verdict and rule.
    pub(crate) refused: Vec<(String, f64)>,
}

#[derive(Debug)]
pub(crate) struct BackendRow {
    pub(crate) address: String,
    pub(crate) identity: &'static str,
    pub(crate) up: bool,
    /// How long ago the last check ended, and its result.
    pub(crate) last_check: Option<(Duration, Result<(), String>)>,
    pub(crate) in_use: usize,
    pub(crate) max: usize,
    pub(crate) kept: usize,
    /// Mean time to the backend's verdict on a message, seconds.
    pub(crate) reply_time: Option<f64>,
    pub(crate) errors: f64,
}

#[derive(Debug)]
pub(crate) struct TableRow {
    pub(crate) name: String,
    pub(crate) domains: String,
    pub(crate) source: String,
    /// Lookups by result (known, unknown, failed).
    pub(crate) lookups: Vec<(String, f64)>,
}

#[derive(Debug)]
pub(crate) struct FilterRow {
    pub(crate) name: String,
    pub(crate) verdicts: Vec<(String, f64)>,
    pub(crate) errors: Vec<(String, f64)>,
}

/// Gathers the page: `show_clients` when the request may see client addresses,
/// `client` a filter on them (a prefix of the address).
pub(crate) fn gather(status: &Status, show_clients: bool, client: Option<String>) -> Page {
    let config = status.live.load_full();
    let samples = Samples::parse(&metrics::render());
    let states = status.backends.all(&config.backends);
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            let of = [("listener", l.name.as_str())];
            let accepted = samples.sum(metrics::CONNECTIONS, &[("listener", &l.name), ("verdict", "accepted")]);
            let mut refused = Vec::new();
            for (verdict, _) in samples.by(metrics::CONNECTIONS, "verdict", &of) {
                if verdict == "accepted" {
                    continue;
                }
                for (rule, n) in
                    samples.by(metrics::CONNECTIONS, "rule", &[("listener", &l.name), ("verdict", &verdict)])
                {
                    refused.push((format!("{verdict}: {rule}"), n));
                }
            }
            ListenerRow {
                name: l.name.clone(),
                bind: l.bind.to_string(),
                tls: match l.tls {
                    ListenerTls::None => "none",
                    ListenerTls::StartTls => "STARTTLS",
                    ListenerTls::Implicit => "implicit",
                },
                proxy_protocol: l.proxy_protocol,
                open: (accepted - samples.sum(metrics::SESSIONS, &of)).max(0.0),
                accepted,
                refused,
            }
        })
        .collect();
    let backends = config
        .backends
        .iter()
        .zip(&states)
        .map(|(b, state)| {
            let of = [("backend", b.address.as_str())];
            let count = samples.sum(&format!("{}_count", metrics::BACKEND_REPLY_SECONDS), &of);
            let sum = samples.sum(&format!("{}_sum", metrics::BACKEND_REPLY_SECONDS), &of);
            let max = b.max_connections.max(1);
            BackendRow {
                address: b.address.clone(),
                identity: b.identity.name(),
                up: state.health.is_up(),
                last_check: state.health.last_check().map(|(at, result)| (at.elapsed(), result)),
                in_use: max.saturating_sub(state.slots.available_permits()),
                max,
                kept: crate::backend::pool::kept(&b.address),
                reply_time: (count > 0.0).then(|| sum / count),
                errors: samples.sum(metrics::BACKEND_ERRORS, &of),
            }
        })
        .collect();
    let mut filters: Vec<FilterRow> = Vec::new();
    for m in config.listeners.iter().flat_map(|l| &l.milters) {
        if filters.iter().any(|f| f.name == m.name) {
            continue;
        }
        let of = [("milter", m.name.as_str())];
        filters.push(FilterRow {
            name: m.name.clone(),
            verdicts: samples.by(metrics::MILTER_VERDICTS, "verdict", &of),
            errors: samples.by(metrics::MILTER_ERRORS, "error", &of),
        });
    }
    let recipient_tables = config
        .recipients
        .iter()
        .map(|t| {
            let name = t.name();
            let lookups = samples.by(metrics::RECIPIENT_LOOKUPS, "result", &[("table", &name)]);
            TableRow { domains: t.domains.entries().join(", "), source: t.source.to_string(), lookups, name }
        })
        .collect();
    let certificate = config
        .acme
        .as_ref()
        .map(|a| (a.domains.first().cloned().unwrap_or_default(), status.certs.as_ref().and_then(|c| c.expiry())));
    let kept = activity::refusals();
    let refusals_kept = kept.len();
    let refusals = match (&client, show_clients) {
        (Some(prefix), true) => {
            kept.into_iter().filter(|r| r.client.to_string().starts_with(prefix.as_str())).collect()
        }
        _ => kept,
    };
    let (started, uptime) = activity::started();
    let now = SystemTime::now();
    Page {
        hostname: config.hostname.clone(),
        started,
        uptime,
        listeners,
        backends,
        messages: samples.by(metrics::MESSAGES, "outcome", &[]),
        recipients: samples.by(metrics::RECIPIENTS, "outcome", &[]),
        history: activity::history(now),
        // This instance's: counting the fleet's would scan the store at every refresh.
        bans: status.screen.local_bans(),
        limits: samples.by(metrics::LIMIT_REFUSALS, "limit", &[]),
        dns_lists: samples.by(metrics::DNSBL_VERDICTS, "action", &[]),
        store_up: config.store.as_ref().map(|_| samples.sum(metrics::STORE_UP, &[]) > 0.0),
        filters,
        recipient_tables,
        certificate,
        reload: activity::last_reload(),
        refusals,
        refusals_kept,
        client_filter: client.filter(|_| show_clients),
        show_clients,
    }
}

/// The page as HTML.
pub(crate) fn render(page: &Page) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let title = format!("Portcullis on {}", page.hostname);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<header><h1>{}</h1><p>version {} · up <span id=\"uptime\" data-seconds=\"{}\">{}</span> · started {} · \
         refreshed every {REFRESH} s · <a href=\"/metrics\">metrics</a></p></header>",
        esc(&title),
        env!("CARGO_PKG_VERSION"),
        page.uptime.as_secs(),
        human(page.uptime),
        stamp(page.started),
    );
    messages(&mut h, page);
    listeners(&mut h, page);
    backends(&mut h, page);
    screening(&mut h, page);
    if !page.filters.is_empty() {
        filters(&mut h, page);
    }
    if !page.recipient_tables.is_empty() {
        recipient_tables(&mut h, page);
    }
    if let Some((name, expiry)) = &page.certificate {
        certificate(&mut h, name, *expiry);
    }
    reload(&mut h, page);
    refusals(&mut h, page);
    h.push_str("</body></html>\n");
    h
}

fn messages(h: &mut String, page: &Page) {
    let get = |list: &[(String, f64)], key: &str| list.iter().find(|(k, _)| k == key).map_or(0.0, |(_, v)| *v);
    let delivered = get(&page.messages, "delivered");
    let refused = get(&page.messages, "refused") + get(&page.messages, "rejected");
    let _ = write!(
        h,
        "<section id=\"messages\"><h2>Messages</h2><p class=\"totals\">\
         <span class=\"good\">delivered <b id=\"messages-delivered\">{delivered}</b></span> · \
         <span class=\"bad\">refused <b id=\"messages-refused\">{refused}</b></span> \
         (by the backend {}, by us {}) · failed (backend trouble) <b id=\"messages-failed\">{}</b> · \
         recipients accepted <b id=\"recipients-accepted\">{}</b>, refused <b id=\"recipients-refused\">{}</b></p>",
        get(&page.messages, "refused"),
        get(&page.messages, "rejected"),
        get(&page.messages, "failed"),
        get(&page.recipients, "accepted"),
        get(&page.recipients, "refused"),
    );
    chart(h, &page.history);
    h.push_str("</section>\n");
}

/// Delivered and refused messages per minute over the last hour, as an inline SVG.
fn chart(h: &mut String, history: &[Minute]) {
    const W: usize = 720;
    const H: usize = 150;
    let top = history.iter().map(|m| m.delivered.max(m.refused)).max().unwrap_or(0).max(1);
    let bar = W / history.len().max(1);
    let _ = write!(
        h,
        "<svg id=\"history\" role=\"img\" viewBox=\"0 0 {W} {}\" width=\"{W}\" height=\"{}\">\
         <title>Messages per minute, last hour: delivered (green) and refused (red)</title>\
         <line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" class=\"axis\"/>",
        H + 18,
        H + 18
    );
    for (i, m) in history.iter().enumerate() {
        let x = i * bar;
        for (n, class, offset) in [(m.delivered, "good", 0), (m.refused, "bad", bar / 2)] {
            if n == 0 {
                continue;
            }
            let height = (n as usize * (H - 10) / top as usize).max(2);
            let _ = write!(
                h,
                "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\"><title>{} {class}: {n}</title></rect>",
                x + offset,
                H - height,
                (bar / 2).max(1),
                minute_label(m.minute),
            );
        }
    }
    let _ = write!(
        h,
        "<text x=\"0\" y=\"{}\">60 min ago</text><text x=\"{W}\" y=\"{}\" text-anchor=\"end\">now</text>\
         <text x=\"2\" y=\"12\">{top}/min</text></svg>",
        H + 15,
        H + 15
    );
}

fn listeners(h: &mut String, page: &Page) {
    h.push_str(
        "<section id=\"listeners\"><h2>Listeners</h2><table><tr><th>name</th><th>bind</th><th>TLS</th>\
         <th>sessions open</th><th>accepted</th><th>refused (by rule)</th></tr>",
    );
    for l in &page.listeners {
        let refused = if l.refused.is_empty() { "—".to_string() } else { pairs(&l.refused) };
        let _ = write!(
            h,
            "<tr data-listener=\"{name}\"><td>{name}{proxy}</td><td>{}</td><td>{}</td><td class=\"open\">{}</td>\
             <td class=\"accepted\">{}</td><td class=\"refused\">{}</td></tr>",
            esc(&l.bind),
            l.tls,
            l.open,
            l.accepted,
            refused,
            name = esc(&l.name),
            proxy = if l.proxy_protocol { " <small>(PROXY)</small>" } else { "" },
        );
    }
    h.push_str("</table></section>\n");
}

fn backends(h: &mut String, page: &Page) {
    h.push_str(
        "<section id=\"backends\"><h2>Backends</h2><table><tr><th>address</th><th>identity</th><th>state</th>\
         <th>last check</th><th>connections</th><th>kept idle</th><th>reply time</th><th>errors</th></tr>",
    );
    for b in &page.backends {
        let check = match &b.last_check {
            None => "not checked".to_string(),
            Some((ago, Ok(()))) => format!("ok, {} ago", human(*ago)),
            Some((ago, Err(e))) => format!("failed {} ago: {}", human(*ago), esc(e)),
        };
        let share = b.in_use * 100 / b.max;
        let reply = b.reply_time.map_or("—".to_string(), |s| format!("{:.1} ms", s * 1000.0));
        let _ = write!(
            h,
            "<tr data-backend=\"{address}\"><td>{address}</td><td>{}</td><td class=\"state {state}\">{state}</td>\
             <td class=\"check\">{check}</td><td><div class=\"bar\" title=\"{share}%\"><span style=\"width:{share}%\"></span></div>\
             <span class=\"use\">{} / {}</span></td><td class=\"kept\">{}</td><td>{reply}</td><td>{}</td></tr>",
            b.identity,
            b.in_use,
            b.max,
            b.kept,
            b.errors,
            address = esc(&b.address),
            state = if b.up { "up" } else { "down" },
        );
    }
    h.push_str("</table></section>\n");
}

fn screening(h: &mut String, page: &Page) {
    let store = match page.store_up {
        None => String::new(),
        Some(true) => " · shared store <b class=\"good\">answering</b>".to_string(),
        Some(false) => " · shared store <b class=\"bad\">not answering (local limits)</b>".to_string(),
    };
    let _ = writeln!(
        h,
        "<section id=\"screening\"><h2>Screening</h2><p>bans in force here <b id=\"bans\">{}</b>{store}</p>\
         <p>limits reached: {}</p><p>DNS list verdicts: {}</p></section>",
        page.bans,
        if page.limits.is_empty() { "none".to_string() } else { pairs(&page.limits) },
        if page.dns_lists.is_empty() { "none".to_string() } else { pairs(&page.dns_lists) },
    );
}

fn filters(h: &mut String, page: &Page) {
    h.push_str("<section id=\"filters\"><h2>Content filters</h2><table><tr><th>filter</th><th>verdicts</th><th>errors</th></tr>");
    for f in &page.filters {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&f.name),
            if f.verdicts.is_empty() { "—".to_string() } else { pairs(&f.verdicts) },
            if f.errors.is_empty() { "good" } else { "bad" },
            if f.errors.is_empty() { "none".to_string() } else { pairs(&f.errors) },
        );
    }
    h.push_str("</table></section>\n");
}

fn recipient_tables(h: &mut String, page: &Page) {
    h.push_str(
        "<section id=\"recipients\"><h2>Recipient tables</h2><table><tr><th>table</th><th>domains</th>\
         <th>source</th><th>lookups</th></tr>",
    );
    for t in &page.recipient_tables {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.name),
            esc(&t.domains),
            esc(&t.source),
            if t.lookups.is_empty() { "none yet".to_string() } else { pairs(&t.lookups) },
        );
    }
    h.push_str("</table></section>\n");
}

fn certificate(h: &mut String, name: &str, expiry: Option<SystemTime>) {
    let state = match expiry {
        None => "<b class=\"bad\">none yet</b>: STARTTLS is not offered until there is one".to_string(),
        Some(at) => match at.duration_since(SystemTime::now()) {
            Ok(left) => format!("expires {} (in {})", stamp(at), human(left)),
            Err(_) => format!("<b class=\"bad\">expired {}</b>", stamp(at)),
        },
    };
    let _ = writeln!(
        h,
        "<section id=\"certificate\"><h2>TLS certificate (ACME)</h2><p>{}: {state}</p></section>",
        esc(name)
    );
}

fn reload(h: &mut String, page: &Page) {
    h.push_str("<section id=\"reload\"><h2>Last reload</h2>");
    match &page.reload {
        None => h.push_str("<p>none since the start</p>"),
        Some(r) => {
            let _ = write!(
                h,
                "<p>{} · <b class=\"{}\">{}</b></p><ul>",
                stamp(r.at),
                if r.ok { "good" } else { "bad" },
                if r.ok { "applied" } else { "refused; the running config stays" }
            );
            if r.changes.is_empty() {
                h.push_str("<li>no change</li>");
            }
            for c in &r.changes {
                let _ = write!(h, "<li>{}</li>", esc(c));
            }
            h.push_str("</ul>");
        }
    }
    h.push_str("</section>\n");
}

fn refusals(h: &mut String, page: &Page) {
    let _ = write!(
        h,
        "<section id=\"refusals\"><h2>Why was this client refused?</h2><p>The last {} refusals kept (at most {}), newest first.</p>",
        page.refusals_kept,
        activity::REFUSALS_KEPT
    );
    if page.show_clients {
        let _ = write!(
            h,
            "<form method=\"get\" action=\"/\"><label>client address starts with \
             <input name=\"client\" value=\"{}\" placeholder=\"203.0.113.7\"></label> <button>show</button></form>",
            esc(page.client_filter.as_deref().unwrap_or(""))
        );
    } else {
        h.push_str(
            "<p class=\"note\">Client addresses are hidden: this endpoint is reachable beyond loopback. \
             <a href=\"/?login\">Log in</a> with the admin token as the password to see them.</p>",
        );
    }
    h.push_str("<table><tr><th>time</th><th>client</th><th>listener</th><th>rule or reason</th></tr>");
    for r in &page.refusals {
        let client = if page.show_clients { esc(&r.client.to_string()) } else { "hidden".to_string() };
        let _ = write!(
            h,
            "<tr class=\"refusal\"><td>{}</td><td class=\"client\">{client}</td><td>{}</td><td class=\"reason\">{}</td></tr>",
            stamp(r.at),
            esc(&r.listener),
            esc(&r.reason)
        );
    }
    if page.refusals.is_empty() {
        h.push_str("<tr><td colspan=\"4\">none</td></tr>");
    }
    h.push_str("</table></section>\n");
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}\
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}\
header p{color:#555;margin:.2em 0}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}th{background:#f4f4f4}\
.good{color:#1a7f37;fill:#2da44e}.bad{color:#cf222e;fill:#e5534b}.state.up{color:#1a7f37;font-weight:bold}\
.state.down{color:#fff;background:#cf222e;font-weight:bold}.axis{stroke:#999}svg text{font-size:11px;fill:#666}\
.bar{display:inline-block;width:80px;height:8px;background:#eee;margin-right:6px;vertical-align:middle}\
.bar span{display:block;height:100%;background:#0969da}.note{color:#666}small{color:#666}";

/// Escapes text for HTML (element content and quoted attributes).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pairs(list: &[(String, f64)]) -> String {
    list.iter().map(|(k, v)| format!("{} {v}", esc(k))).collect::<Vec<_>>().join(", ")
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string().replacen('T', " ", 1).replace('Z', " UTC")
}

fn minute_label(minute: u64) -> String {
    let rest = minute * 60 % 86400;
    format!("{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::UNIX_EPOCH;

    fn page() -> Page {
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        Page {
            hostname: "mx<1>.example".into(),
            started: now - Duration::from_secs(3700),
            uptime: Duration::from_secs(3700),
            listeners: vec![ListenerRow {
                name: "mx".into(),
                bind: "0.0.0.0:25".into(),
                tls: "STARTTLS",
                proxy_protocol: false,
                open: 2.0,
                accepted: 10.0,
                refused: vec![("rejected: blocked".into(), 3.0)],
            }],
            backends: vec![BackendRow {
                address: "127.0.0.1:10025".into(),
                identity: "xclient",
                up: false,
                last_check: Some((Duration::from_secs(2), Err("connection refused <x>".into()))),
                in_use: 5,
                max: 20,
                kept: 1,
                reply_time: Some(0.0042),
                errors: 1.0,
            }],
            messages: vec![("delivered".into(), 4.0), ("rejected".into(), 1.0)],
            recipients: vec![],
            history: vec![Minute { minute: 29_666_666, delivered: 3, refused: 1 }; 60],
            bans: 1,
            limits: vec![],
            dns_lists: vec![],
            store_up: None,
            filters: vec![],
            recipient_tables: vec![TableRow {
                name: "recipients[0]".into(),
                domains: "example.com".into(),
                source: "ldap ldaps://dc1.example.com".into(),
                lookups: vec![("known".into(), 3.0), ("unknown".into(), 1.0)],
            }],
            certificate: Some((
                "mx.example.com".into(),
                Some(SystemTime::now() + Duration::from_secs(40 * 86400 + 60)),
            )),
            reload: Some(Reload { at: now, ok: true, changes: vec!["relay.networks: +10.0.0.0/8".into()] }),
            refusals: vec![Refusal {
                at: now,
                client: IpAddr::from([203, 0, 113, 7]),
                listener: "mx".into(),
                reason: "relay (no relay rule matched)".into(),
            }],
            refusals_kept: 1,
            client_filter: Some("203.".into()),
            show_clients: true,
        }
    }

    #[test]
    fn the_page_says_what_it_was_given_escaped() {
        let html = render(&page());
        assert!(html.contains("Portcullis on mx&lt;1&gt;.example"), "escaped hostname");
        assert!(html.contains("<b id=\"messages-delivered\">4</b>"));
        assert!(html.contains("<b id=\"messages-refused\">1</b>"));
        assert!(html.contains("class=\"state down\">down"));
        assert!(html.contains("failed 2s ago: connection refused &lt;x&gt;"));
        assert!(html.contains("width:25%"), "5 of 20 connections");
        assert!(html.contains("4.2 ms"));
        assert!(html.contains("203.0.113.7") && html.contains("relay (no relay rule matched)"));
        assert!(html.contains("value=\"203.\""));
        assert_eq!(html.matches("<rect").count(), 120, "two bars a minute");
        assert!(html.contains("up <span id=\"uptime\" data-seconds=\"3700\">1h 1m</span>"));
        assert!(html.contains("<td>ldap ldaps://dc1.example.com</td><td>known 3, unknown 1</td>"));
        assert!(html.contains("mx.example.com: expires") && html.contains("(in 40d 0h)"), "{html}");
    }

    #[test]
    fn client_addresses_stay_hidden_where_the_endpoint_is_open() {
        let mut p = page();
        p.show_clients = false;
        p.client_filter = None;
        let html = render(&p);
        assert!(!html.contains("203.0.113.7"));
        assert!(html.contains("<td class=\"client\">hidden</td>"));
        assert!(!html.contains("<form"));
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(stamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 UTC");
        assert_eq!(stamp(UNIX_EPOCH + Duration::from_secs(1_796_563_845)), "2026-12-06 13:30:45 UTC");
    }

    #[test]
    fn rendering_a_full_page_is_cheap() {
        let mut p = page();
        let one = p.refusals[0].clone();
        p.refusals = vec![one; activity::REFUSALS_KEPT];
        p.backends = (0..8).map(|_| page().backends.remove(0)).collect();
        let started = std::time::Instant::now();
        let rounds = 200;
        for _ in 0..rounds {
            std::hint::black_box(render(&p));
        }
        let each = started.elapsed() / rounds;
        let rings = activity::REFUSALS_KEPT * std::mem::size_of::<Refusal>()
            + activity::MINUTES * std::mem::size_of::<Minute>();
        eprintln!(
            "render of a full page: {each:?}, {} bytes; the rings hold {rings} bytes (+ names)",
            render(&p).len()
        );
    }
}
