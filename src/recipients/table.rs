//! A `[[recipients]]` table as the config holds it: plain data. No connection, no
//! cache and no file contents live here; [`super::Recipients`] builds those from it
//! at start and again at every reload.

use crate::policy::DomainSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long an answer is kept (Postfix's proxymap and most directory caches keep
/// minutes): a new mailbox is known after at most this long.
pub(crate) const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(600);
/// One lookup, connection and bind included; the client waits this long at most.
pub(crate) const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// Position among the `[[recipients]]` tables (`recipients[i]` in logs and metrics).
    pub(crate) index: usize,
    /// The local domains this table answers for (a `.suffix` entry: every subdomain).
    pub(crate) domains: DomainSet,
    pub(crate) source: Source,
    /// How long answers are kept; zero: not kept.
    pub(crate) cache_ttl: Duration,
    pub(crate) on_error: OnError,
    /// Characters that start an address extension (Postfix's `recipient_delimiter`):
    /// `user+detail@d` is looked up as itself, then as `user@d`.
    pub(crate) delimiters: Option<String>,
}

impl Table {
    /// `recipients[0]`: the name in logs, metrics and `explain`.
    pub(crate) fn name(&self) -> String {
        format!("recipients[{}]", self.index)
    }

    /// The name and the source, for a log line: `recipients[0] (ldap ldaps://dc1)`.
    pub(crate) fn describe(&self) -> String {
        format!("{} ({})", self.name(), self.source)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// One address a line; `@domain` for a whole domain.
    File(PathBuf),
    Ldap(Directory),
}

impl Source {
    /// "file" or "ldap", for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Ldap(_) => "ldap",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Ldap(d) => write!(f, "ldap {}", d.url),
        }
    }
}

/// A directory to ask (Active Directory, OpenLDAP).
#[derive(Clone)]
pub(crate) struct Directory {
    /// `ldaps://host[:port]` or `ldap://host[:port]`.
    pub(crate) url: String,
    /// StartTLS on an `ldap://` URL before the bind.
    pub(crate) starttls: bool,
    /// The trust for `ldaps://` and StartTLS (`ca_file`, else the system roots); none
    /// for plain `ldap://`.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) ca_file: Option<PathBuf>,
    /// Simple bind: DN and the password read from `bind_password_file`; none: anonymous.
    pub(crate) bind: Option<Bind>,
    /// Searched with subtree scope.
    pub(crate) base: String,
    /// With `%s` standing for the recipient, escaped per RFC 4515.
    pub(crate) filter: String,
    /// One lookup at most, connection and bind included.
    pub(crate) timeout: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bind {
    pub(crate) dn: String,
    pub(crate) password: String,
}

impl Directory {
    /// Every setting that makes a connection or a search different, the password
    /// aside: two tables with the same one may share connections and cached answers.
    pub(crate) fn settings(&self) -> String {
        format!(
            "{} starttls={} ca_file={} bind_dn={} base={} filter={} timeout={:?}",
            self.url,
            self.starttls,
            self.ca_file.as_ref().map_or("-".into(), |p| p.display().to_string()),
            self.bind.as_ref().map_or("-", |b| b.dn.as_str()),
            self.base,
            self.filter,
            self.timeout
        )
    }
}

// The password stays out of debug output (and so out of logs).
impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind.as_ref().map(|b| &b.dn))
            .field("base", &self.base)
            .field("filter", &self.filter)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a recipient gets while its table's source cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// `451 4.4.3`: the client retries later (the default: nothing unknown gets in).
    Tempfail,
    /// Passed to the backend, which decides (it accepted everything before).
    Accept,
}

impl OnError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OnError::Tempfail => "tempfail",
            OnError::Accept => "accept",
        }
    }
}
