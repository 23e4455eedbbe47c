//! `[acme]` validated: where certificates come from (an ACME CA, RFC 8555), for which
//! names, how the CA's challenge is answered, and where account and certificate are
//! kept. Plain data; the running side is [`crate::acme`].

use super::raw::RawAcme;
use super::{ListenerTls, Validator};
use crate::policy::domains::check_domain;
use crate::tls::{self as tlsconf, Verify};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Renew this long before a certificate expires (Let's Encrypt's own advice for its
/// 90-day certificates: at two thirds of their life).
pub(crate) const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
pub(crate) const DEFAULT_HTTP_BIND: &str = "0.0.0.0:80";

/// How the CA is shown that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// A file under `/.well-known/acme-challenge/`, served on `http_bind` (RFC 8555 8.3).
    Http01,
    /// A special certificate in a TLS handshake with ALPN `acme-tls/1` on an
    /// implicit-TLS listener (RFC 8737).
    TlsAlpn01,
}

impl Challenge {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AcmeConfig {
    pub(crate) directory: String,
    pub(crate) contact: Vec<String>,
    /// Lower case, no duplicates; the first is the certificate's subject.
    pub(crate) domains: Vec<String>,
    pub(crate) challenge: Challenge,
    /// Set for HTTP-01 only.
    pub(crate) http_bind: Option<SocketAddr>,
    pub(crate) state_dir: PathBuf,
    pub(crate) renew_before: Duration,
    pub(crate) ca_file: Option<PathBuf>,
    /// How the CA's API is trusted (`ca_file`, or the system's roots).
    pub(crate) api_tls: Arc<rustls::ClientConfig>,
}

impl AcmeConfig {
    /// The settings as they would be written, to compare two configs by (the client
    /// TLS config has no equality of its own; `ca_file` names it).
    pub(crate) fn settings(&self) -> String {
        format!(
            "directory={} contact={:?} domains={:?} challenge={} http_bind={:?} state_dir={} renew_before={:?} ca_file={:?}",
            self.directory,
            self.contact,
            self.domains,
            self.challenge.as_str(),
            self.http_bind,
            self.state_dir.display(),
            self.renew_before,
            self.ca_file
        )
    }
}

impl Validator {
    pub(super) fn acme(&mut self, raw: &RawAcme, listeners: &[(usize, super::Listener)]) -> Option<AcmeConfig> {
        let before = self.problems.len();
        let directory = raw.directory.trim().to_string();
        match directory.parse::<hyper::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            _ => self.error("acme.directory", format!("{directory:?}: expected an https:// URL")),
        }
        let contact = raw.contact.as_ref().map(|c| c.to_vec()).unwrap_or_default();
        for (i, c) in contact.iter().enumerate() {
            let ok = c.strip_prefix("mailto:").is_some_and(|a| a.contains('@') && !a.contains(char::is_whitespace));
            if !ok {
                self.error(format!("acme.contact[{i}]"), format!("{c:?}: expected \"mailto:address\""));
            }
        }
        if raw.domains.is_empty() {
            self.error("acme.domains", "empty: name at least one domain for the certificate");
        }
        let mut domains: Vec<String> = Vec::new();
        for (i, d) in raw.domains.iter().enumerate() {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            let bad = if d.starts_with("*.") {
                Some("wildcards need the DNS-01 challenge, which is not supported".to_string())
            } else if d.starts_with('.') {
                Some("leading dot".to_string())
            } else {
                check_domain(&d).err().map(|e| e.to_string())
            };
            match bad {
                Some(e) => self.error(format!("acme.domains[{i}]"), format!("{d:?}: {e}")),
                None if domains.contains(&d) => self.error(format!("acme.domains[{i}]"), format!("{d:?} twice")),
                None => domains.push(d),
            }
        }
        let challenge = self.choice(
            "acme.challenge",
            raw.challenge.as_deref().unwrap_or("http-01"),
            &[("http-01", Challenge::Http01), ("tls-alpn-01", Challenge::TlsAlpn01)],
        );
        let http_bind = match challenge {
            Some(Challenge::Http01) => {
                let text = raw.http_bind.as_deref().unwrap_or(DEFAULT_HTTP_BIND);
                let bind = text.parse::<SocketAddr>().map_err(|_| {
                    self.error("acme.http_bind", format!("{text:?} is not an address:port (IPv6: [addr]:port)"))
                });
                if let Ok(bind) = bind
                    && let Some((_, l)) = listeners.iter().find(|(_, l)| l.bind == bind && bind.port() != 0)
                {
                    self.error("acme.http_bind", format!("{bind} is bound by listener {:?}", l.name));
                }
                if let Ok(bind) = bind
                    && bind.port() != 80
                    && bind.port() != 0
                {
                    self.warnings.push(format!(
                        "acme.http_bind = \"{bind}\": the CA connects to port 80; forward port 80 to it"
                    ));
                }
                bind.ok()
            }
            Some(Challenge::TlsAlpn01) => {
                if raw.http_bind.is_some() {
                    self.warnings.push("acme.http_bind is not used with challenge = \"tls-alpn-01\"".into());
                }
                let implicit: Vec<_> = listeners.iter().filter(|(_, l)| l.tls == ListenerTls::Implicit).collect();
                if implicit.is_empty() {
                    self.error(
                        "acme.challenge",
                        "\"tls-alpn-01\" is answered on a listener with tls = \"implicit\"; there is none",
                    );
                } else if !implicit.iter().any(|(_, l)| l.bind.port() == 443 || l.bind.port() == 0) {
                    self.warnings.push(
                        "acme.challenge = \"tls-alpn-01\": the CA connects to port 443; forward port 443 to an \
                         implicit-TLS listener"
                            .into(),
                    );
                }
                None
            }
            None => None,
        };
        let state_dir = PathBuf::from(&raw.state_dir);
        if raw.state_dir.trim().is_empty() {
            self.error("acme.state_dir", "empty");
        } else if !state_dir.is_absolute() {
            self.error("acme.state_dir", format!("{:?}: expected an absolute path", raw.state_dir));
        } else if state_dir.exists() && !state_dir.is_dir() {
            self.error("acme.state_dir", format!("{}: not a directory", state_dir.display()));
        }
        let renew_before = self.duration("acme.renew_before", raw.renew_before.as_deref(), DEFAULT_RENEW_BEFORE, false);
        let ca_file = raw.ca_file.as_ref().map(PathBuf::from);
        let verify = match &ca_file {
            Some(path) => Verify::CaFile(path.clone()),
            None => Verify::SystemRoots,
        };
        let api_tls = tlsconf::client_config(&verify).map_err(|e| self.error("acme.ca_file", e)).ok();
        if self.problems.len() > before {
            return None;
        }
        Some(AcmeConfig {
            directory,
            contact,
            domains,
            challenge: challenge?,
            http_bind,
            state_dir,
            renew_before,
            ca_file,
            api_tls: api_tls?,
        })
    }
}
