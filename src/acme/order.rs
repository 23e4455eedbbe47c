//! One issuance, start to end, with `instant-acme`: the account (made once, then read
//! from the state directory), an order for the configured names, each authorization's
//! challenge answered through [`Certificates`], a fresh key and CSR, and the chain.
//! Returns the bundle to store; the caller decides what to do with failures.

use super::Certificates;
use super::schedule::Failure;
use super::stored::StateDir;
use crate::config::acme::{AcmeConfig, Challenge};
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// Waiting for the CA to validate, and then to issue.
const VALIDATION_WAIT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub(crate) enum OrderError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("validation of {name} failed: {problem}")]
    Validation { name: String, problem: String },
    #[error("the order became invalid: {0}")]
    Invalid(String),
    #[error("the CA offers no {challenge} challenge for {name}")]
    NoChallenge { name: String, challenge: &'static str },
    #[error("state directory: {0}")]
    State(std::io::Error),
    #[error("stored account: {0}")]
    Account(serde_json::Error),
    #[error("key or CSR: {0}")]
    Csr(rcgen::Error),
    #[error("challenge certificate: {0}")]
    ChallengeKey(rustls::Error),
    #[error("the CA sent a certificate that cannot be used: {0}")]
    Bundle(super::stored::BundleError),
}

impl OrderError {
    /// How soon to try again after it.
    pub(crate) fn kind(&self) -> Failure {
        match self {
            OrderError::Acme(instant_acme::Error::Api(_)) => Failure::Refused,
            OrderError::Acme(_) => Failure::Unreachable,
            OrderError::Validation { .. } | OrderError::Invalid(_) | OrderError::NoChallenge { .. } => Failure::Refused,
            OrderError::Bundle(_) => Failure::Refused,
            OrderError::State(_) | OrderError::Account(_) | OrderError::Csr(_) | OrderError::ChallengeKey(_) => {
                Failure::Local
            }
        }
    }
}

/// `account.json`: the credentials and the directory they were made at, so that a
/// changed `directory` makes a new account instead of failing with the old one.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Obtains a certificate for `config.domains`; the PEM bundle (chain, then key).
pub(crate) async fn obtain(config: &AcmeConfig, certs: &Certificates, state: &StateDir) -> Result<String, OrderError> {
    let known = account(config, state, false).await?;
    let fresh = match order(config, certs, &known).await {
        Err(OrderError::Acme(instant_acme::Error::Api(p)))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
        {
            // The CA forgot the account (a reset test CA, a deactivated account): make
            // a new one and try once more.
            tracing::warn!(directory = %config.directory, "the CA does not know the stored account; registering a new one");
            account(config, state, true).await?
        }
        done => return done,
    };
    order(config, certs, &fresh).await
}

/// The stored account for this directory, or a new one (stored at once).
async fn account(config: &AcmeConfig, state: &StateDir, fresh: bool) -> Result<Account, OrderError> {
    if !fresh && let Some(bytes) = state.read_account().map_err(OrderError::State)? {
        match serde_json::from_slice::<StoredAccount>(&bytes) {
            Ok(stored) if stored.directory == config.directory => {
                return Ok(Account::builder_with_http(http(config)).from_credentials(stored.credentials).await?);
            }
            Ok(_) => {
                tracing::info!(directory = %config.directory, "stored account is for another directory; registering a new one")
            }
            Err(e) => return Err(OrderError::Account(e)),
        }
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) =
        Account::builder_with_http(http(config)).create(&new, config.directory.clone(), None).await?;
    let stored = StoredAccount { directory: config.directory.clone(), credentials };
    let json = serde_json::to_vec_pretty(&stored).map_err(OrderError::Account)?;
    state.write_account(&json).map_err(OrderError::State)?;
    tracing::info!(directory = %config.directory, account = %account.id(), "ACME account registered");
    Ok(account)
}

/// The HTTP client for the CA's API: HTTPS only, trusting `ca_file` or the system.
fn http(config: &AcmeConfig) -> Box<dyn instant_acme::HttpClient> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.enforce_http(false);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config.api_tls).clone())
        .https_only()
        .enable_http1()
        .wrap_connector(connector);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, BodyWrapper<Bytes>>(https);
    Box::new(client)
}

async fn order(config: &AcmeConfig, certs: &Certificates, account: &Account) -> Result<String, OrderError> {
    let identifiers: Vec<Identifier> = config.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let kind = match config.challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    // The answers stay up until the order is settled, whatever happens.
    let _answers = Answers(certs);
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status == AuthorizationStatus::Valid {
            continue; // validated recently for this account; the CA reuses it
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or(OrderError::NoChallenge { name: name.clone(), challenge: config.challenge.as_str() })?;
        let key_authorization = challenge.key_authorization();
        match config.challenge {
            Challenge::Http01 => certs.answer_http(&challenge.token, key_authorization.as_str()),
            Challenge::TlsAlpn01 => certs.answer_tls_alpn(&name, key_authorization.digest().as_ref())?,
        }
        challenge.set_ready().await?;
        tracing::info!(%name, challenge = config.challenge.as_str(), "ACME challenge ready; waiting for the CA");
    }
    let wait = RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(VALIDATION_WAIT);
    let status = order.poll_ready(&wait).await?;
    if status != OrderStatus::Ready {
        return Err(why_invalid(&mut order).await);
    }
    let mut params = rcgen::CertificateParams::new(config.domains.clone()).map_err(OrderError::Csr)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate().map_err(OrderError::Csr)?;
    let csr = params.serialize_request(&key).map_err(OrderError::Csr)?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&wait).await?;
    Ok(format!("{}\n{}", chain.trim_end(), key.serialize_pem()))
}

/// The CA's own words on why validation failed: each failed challenge's problem.
async fn why_invalid(order: &mut instant_acme::Order) -> OrderError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = authz.refresh().await else { continue };
        if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return OrderError::Validation { name: state.identifier().to_string(), problem: problem.to_string() };
        }
    }
    let problem = order.state().error.as_ref().map_or("no reason given".to_string(), |p| p.to_string());
    OrderError::Invalid(problem)
}

/// Takes the challenge answers down when an order is over.
struct Answers<'a>(&'a Certificates);

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        self.0.clear_answers();
    }
}
