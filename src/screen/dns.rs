//! Asking the DNS lists about a client: every zone in parallel through the configured
//! resolver, within one deadline, with answers cached for their TTL (hickory's cache,
//! negative answers included). A zone that fails or answers with an error code counts
//! as nothing, is logged and counted in metrics (`portcullis_dnsbl_lookups_total`).

use super::dnsbl::{Outcome, Score, Unusable, Zone};
use crate::log_limit::LogLimit;
use crate::metrics;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// The DNS lists in force (`[screen] dnsbl`, `threshold`, `nameservers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsLists {
    pub(crate) zones: Arc<[Zone]>,
    /// A score at or above this refuses the client.
    pub(crate) threshold: i32,
    pub(crate) nameservers: Vec<SocketAddr>,
    /// For all the zones together.
    pub(crate) timeout: Duration,
}

/// The least time a "not listed" answer is kept.
const NEGATIVE_MIN_TTL: Duration = Duration::from_secs(60);

/// Answers cached by one worker, at most.
const CACHE_ENTRIES: u64 = 20_000;

thread_local! {
    /// One resolver per worker thread (each has its own runtime), rebuilt when the
    /// nameservers change with a reload.
    static RESOLVER: RefCell<Option<(Vec<SocketAddr>, Duration, TokioResolver)>> = const { RefCell::new(None) };
}

fn resolver(lists: &DnsLists) -> Option<TokioResolver> {
    RESOLVER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some((servers, timeout, r)) = slot.as_ref()
            && *servers == lists.nameservers
            && *timeout == lists.timeout
        {
            return Some(r.clone());
        }
        let servers = lists
            .nameservers
            .iter()
            .map(|s| {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                ns
            })
            .collect();
        let mut opts = ResolverOpts::default();
        // One retry within the deadline: a lost UDP datagram should not lose the zone.
        opts.timeout = lists.timeout / 2;
        opts.attempts = 1;
        opts.cache_size = CACHE_ENTRIES;
        // "Not listed" without a TTL of its own (no SOA in the answer) is still kept a
        // minute, as postscreen's dnsbl_min_ttl does; listings keep their own TTLs.
        opts.negative_min_ttl = Some(NEGATIVE_MIN_TTL);
        opts.use_hosts_file = ResolveHosts::Never;
        let built = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build();
        match built {
            Ok(r) => {
                *slot = Some((lists.nameservers.clone(), lists.timeout, r.clone()));
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "DNS resolver could not be made; DNS lists not consulted");
                None
            }
        }
    })
}

/// The client's score over every zone. Zones that cannot answer count nothing.
pub(crate) async fn score(lists: &DnsLists, client: IpAddr) -> Score {
    let Some(resolver) = resolver(lists) else { return Score::default() };
    let mut lookups = JoinSet::new();
    for (i, zone) in lists.zones.iter().enumerate() {
        let (resolver, name, deadline) = (resolver.clone(), zone.query_name(client), lists.timeout);
        lookups.spawn(async move {
            let outcome = match tokio::time::timeout(deadline, resolver.lookup(name, RecordType::A)).await {
                Ok(Ok(lookup)) => Answered::Records(
                    lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(a.0),
                            _ => None,
                        })
                        .collect(),
                ),
                Ok(Err(e)) if e.is_no_records_found() => Answered::Records(Vec::new()),
                Ok(Err(e)) => Answered::Failed(e.to_string()),
                Err(_) => Answered::Failed("no answer in time".into()),
            };
            (i, outcome)
        });
    }
    let mut outcomes = Vec::with_capacity(lists.zones.len());
    while let Some(done) = lookups.join_next().await {
        let Ok((i, answered)) = done else { continue };
        let zone = &lists.zones[i];
        let outcome = match answered {
            Answered::Records(records) => Outcome::of(zone, &records),
            Answered::Failed(error) => {
                if let Some(suppressed) = LogLimit::global().allow("dnsbl lookup failed", std::time::Instant::now()) {
                    tracing::warn!(zone = %zone, %error, suppressed, "DNS list lookup failed; the zone counts nothing");
                }
                Outcome::Unusable(Unusable::Lookup)
            }
        };
        if outcome == Outcome::Unusable(Unusable::ErrorCode)
            && let Some(suppressed) = LogLimit::global().allow("dnsbl error code", std::time::Instant::now())
        {
            tracing::warn!(
                zone = %zone, suppressed,
                "DNS list answered with an error code (queries refused: a public or blocked resolver, or over the \
                 quota); the zone counts nothing until it answers again"
            );
        }
        metrics::dnsbl_lookup(&zone.name, outcome.label());
        outcomes.push((zone, outcome));
    }
    Score::of(outcomes)
}

enum Answered {
    Records(Vec<std::net::Ipv4Addr>),
    Failed(String),
}
