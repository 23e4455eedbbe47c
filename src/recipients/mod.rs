//! Recipient validation at the edge (`[[recipients]]`): for backends that accept every
//! address of their domains and bounce later, Portcullis knows the valid addresses and
//! answers an unknown one with `550 5.1.1` at RCPT, so the backend never sees it.
//!
//! - [`table`]: a table as the config holds it (plain data);
//! - [`key`]: what is looked up and how it goes into an LDAP filter (pure);
//! - `file`: the file source, read at start and at every reload;
//! - `ldap`: the directory source (pool, reconnect with backoff, per-lookup timeout);
//! - `cache`: answers kept for `cache_ttl`, here and in the shared store.
//!
//! [`Recipients`] is the live side, one per server, kept outside the config: built
//! from the tables at start and rebuilt at every reload (files read again; a directory
//! whose settings did not change keeps its connections). A domain is answered by the
//! first table that names it; other domains are untouched. A source that cannot answer
//! gives [`Verdict::Unavailable`], never an unknown recipient, and never an accepted
//! one unless that table says `on_error = "accept"`.

pub(crate) mod key;
pub(crate) mod table;

mod cache;
mod file;
mod ldap;

pub(crate) use key::Key;
pub(crate) use table::{OnError, Source, Table};

use crate::log_limit::LogLimit;
use crate::metrics;
use crate::screen::store::Store;
use arc_swap::ArcSwap;
use ldap::{Directory, DirectoryError};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::runtime::Handle;

/// The verdict on one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No table names its domain, or it is not a plain mailbox: not ours to judge.
    Untouched,
    Known(Decision),
    /// `550 5.1.1`.
    Unknown(Decision),
    /// The source could not answer: `451 4.4.3`, or passed to the backend when the
    /// table says `on_error = "accept"`.
    Unavailable {
        decision: Decision,
        accept: bool,
        error: String,
    },
}

/// Who decided, for the log line and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The table and its source: `recipients[0] (ldap ldap://dc1)`.
    pub(crate) table: String,
    /// The last key looked up: `alice@example.com`.
    pub(crate) key: String,
    /// Where the answer came from: "file", "ldap", "cache", "store" or "postmaster".
    pub(crate) via: &'static str,
}

impl Verdict {
    /// The reply for a recipient that is not passed on; none when it is.
    pub(crate) fn reply(&self, path: &str) -> Option<String> {
        match self {
            Verdict::Unknown(_) => Some(unknown_reply(path)),
            Verdict::Unavailable { accept: false, .. } => Some(unavailable_reply(path)),
            _ => None,
        }
    }
}

/// Postfix's words for an unknown recipient (`unknown_relay_recipient_reject_code`).
pub(crate) fn unknown_reply(path: &str) -> String {
    format!("550 5.1.1 <{path}>: Recipient address rejected: User unknown")
}

/// RFC 3463 4.4.3: directory server failure.
pub(crate) fn unavailable_reply(path: &str) -> String {
    format!("451 4.4.3 <{path}>: Recipient address rejected: directory unavailable, try again later")
}

/// Reads a recipient file for `check`: its number of entries, or its mistakes.
pub(crate) fn check_file(path: &std::path::Path) -> Result<usize, String> {
    file::Listing::load(path).map(|l| l.len())
}

/// Why the tables could not be made live (a file that cannot be read now).
#[derive(Debug)]
pub struct RecipientsError(pub Vec<String>);

impl fmt::Display for RecipientsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for RecipientsError {}

/// One table, live.
#[derive(Debug)]
struct Live {
    table: Table,
    /// Names the table's answers in the caches: the same settings give the same id
    /// on every instance, changed settings a new one.
    id: String,
    lookup: Lookup,
}

#[derive(Debug)]
enum Lookup {
    File(file::Listing),
    Directory(Arc<Directory>),
}

/// Every table, live; one per server, shared by every session.
pub(crate) struct Recipients {
    tables: ArcSwap<Vec<Arc<Live>>>,
    cache: cache::Cache,
    store: Option<Arc<Store>>,
    /// The directory thread's runtime, started with the first directory.
    runtime: Mutex<Option<Handle>>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipients").field("tables", &self.tables.load().len()).finish()
    }
}

impl Recipients {
    /// Makes `tables` live: files read, directories ready to be asked (connections are
    /// made at the first lookup, so a directory down at start is not fatal).
    pub(crate) fn new(tables: &[Table], store: Option<Arc<Store>>) -> Result<Arc<Recipients>, RecipientsError> {
        let recipients = Recipients {
            tables: ArcSwap::from_pointee(Vec::new()),
            cache: cache::Cache::default(),
            store,
            runtime: Mutex::new(None),
        };
        recipients.update(tables)?;
        Ok(Arc::new(recipients))
    }

    /// Replaces the tables (a reload): every file read again; a directory with the
    /// same settings keeps its connections. On error nothing changes.
    pub(crate) fn update(&self, tables: &[Table]) -> Result<(), RecipientsError> {
        let current = self.tables.load_full();
        let mut next = Vec::new();
        let mut problems = Vec::new();
        for table in tables {
            let lookup = match &table.source {
                Source::File(path) => match file::Listing::load(path) {
                    Ok(listing) => {
                        tracing::info!(table = %table.describe(), entries = listing.len(), "recipient file read");
                        Lookup::File(listing)
                    }
                    Err(e) => {
                        problems.push(format!("{}.file: {e}", table.name()));
                        continue;
                    }
                },
                Source::Ldap(settings) => {
                    let same = current.iter().find_map(|l| match &l.lookup {
                        Lookup::Directory(d)
                            if d.settings().settings() == settings.settings() && d.settings().bind == settings.bind =>
                        {
                            Some(d.clone())
                        }
                        _ => None,
                    });
                    match same {
                        Some(d) => Lookup::Directory(d),
                        None => match self.runtime() {
                            Ok(rt) => Lookup::Directory(Directory::new(settings.clone(), rt)),
                            Err(e) => {
                                problems.push(format!("{}: cannot start the directory thread: {e}", table.name()));
                                continue;
                            }
                        },
                    }
                }
            };
            let id = match &table.source {
                Source::File(path) => format!("file:{}", path.display()),
                Source::Ldap(d) => {
                    format!("{:08x}", crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(d.settings().as_bytes()))
                }
            };
            next.push(Arc::new(Live { table: table.clone(), id, lookup }));
        }
        if !problems.is_empty() {
            return Err(RecipientsError(problems));
        }
        self.tables.store(Arc::new(next));
        Ok(())
    }

    fn runtime(&self) -> std::io::Result<Handle> {
        let mut runtime = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = runtime.as_ref() {
            return Ok(handle.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("portcullis-directory".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        let handle = rx.recv().map_err(|_| std::io::Error::other("directory thread ended at start"))??;
        *runtime = Some(handle.clone());
        Ok(handle)
    }

    /// The verdict on the RCPT path `path` (between `<` and `>`); `smtputf8` when the
    /// transaction said SMTPUTF8.
    pub(crate) async fn check(&self, path: &str, smtputf8: bool) -> Verdict {
        let tables = self.tables.load_full();
        if tables.is_empty() {
            return Verdict::Untouched;
        }
        let Some(key) = Key::parse(path, smtputf8) else {
            // No key to look up (an empty quoted local part, say) in a domain a table
            // answers for: unknown, not passed to a backend that takes every address.
            let domain = Key::domain(path, smtputf8);
            let live = domain.and_then(|d| tables.iter().find(|t| t.table.domains.contains(&d)).cloned());
            return match live {
                Some(live) => {
                    Verdict::Unknown(Decision { table: live.table.describe(), key: path.to_string(), via: "syntax" })
                }
                None => Verdict::Untouched,
            };
        };
        let Some(live) = tables.iter().find(|t| t.table.domains.contains(&key.domain)).cloned() else {
            return Verdict::Untouched;
        };
        let decision = |key: &Key, via| Decision { table: live.table.describe(), key: key.address(), via };
        if key.is_postmaster() {
            return Verdict::Known(decision(&key, "postmaster"));
        }
        let base = live.table.delimiters.as_deref().and_then(|d| key.without_extension(d));
        let mut last = decision(&key, live.table.source.kind());
        for k in std::iter::once(key).chain(base) {
            match self.ask(&live, &k).await {
                Ok((true, via)) => return Verdict::Known(decision(&k, via)),
                Ok((false, via)) => last = decision(&k, via),
                Err(e) => {
                    if let Some(suppressed) = LogLimit::global().allow("directory failed", Instant::now()) {
                        tracing::warn!(
                            table = %live.table.describe(), error = %e, on_error = live.table.on_error.as_str(), suppressed,
                            "recipient directory cannot answer"
                        );
                    }
                    return Verdict::Unavailable {
                        decision: decision(&k, live.table.source.kind()),
                        accept: live.table.on_error == OnError::Accept,
                        error: e.to_string(),
                    };
                }
            }
        }
        Verdict::Unknown(last)
    }

    /// Whether `key` exists in `live`'s source, and where the answer came from.
    async fn ask(&self, live: &Live, key: &Key) -> Result<(bool, &'static str), DirectoryError> {
        let started = Instant::now();
        let name = live.table.name();
        let directory = match &live.lookup {
            Lookup::File(listing) => {
                let known = listing.knows(key);
                metrics::recipient_lookup(&name, "file", answer(known), started.elapsed());
                return Ok((known, "file"));
            }
            Lookup::Directory(d) => d,
        };
        let address = key.address();
        let ttl = live.table.cache_ttl;
        let cache_key = format!("{}:{address}", live.id);
        if !ttl.is_zero() {
            if let Some(known) = self.cache.get(&cache_key, started) {
                metrics::recipient_lookup(&name, "cache", answer(known), started.elapsed());
                return Ok((known, "cache"));
            }
            if let Some(store) = &self.store
                && let Some(Some((known, left))) = Box::pin(store.recipient(&cache_key)).await
            {
                self.cache.put(cache_key, known, left.min(ttl), Instant::now());
                metrics::recipient_lookup(&name, "store", answer(known), started.elapsed());
                return Ok((known, "store"));
            }
        }
        let filter = key::filter(&directory.settings().filter, &address);
        match directory.exists(filter).await {
            Ok(known) => {
                metrics::recipient_lookup(&name, "ldap", answer(known), started.elapsed());
                if !ttl.is_zero() {
                    if let Some(store) = &self.store {
                        store.remember_recipient(&cache_key, known, ttl);
                    }
                    self.cache.put(cache_key, known, ttl, Instant::now());
                }
                Ok((known, "ldap"))
            }
            Err(e) => {
                metrics::recipient_lookup(&name, "ldap", "failed", started.elapsed());
                Err(e)
            }
        }
    }
}

fn answer(known: bool) -> &'static str {
    if known { "known" } else { "unknown" }
}

#[cfg(test)]
mod tests;
