//! HELO and EHLO: a new greeting ends any transaction; EHLO lists what this listener
//! offers now (see [`crate::smtp::ehlo`]).

use super::{Helo, Phase, Session, Step};
use crate::config::ListenerTls;
use crate::smtp::ehlo::{self, Offer};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn hello(&mut self, name: &str, esmtp: bool) -> Step {
        self.reset_transaction().await?;
        let renamed = self.phase.helo().is_some_and(|h| h.name != name || h.esmtp != esmtp);
        if renamed && !self.logged_in_at_backend() {
            // The open connection told the backend the old name (XCLIENT HELO=, or the
            // EHLO it was opened with): the next MAIL opens one that tells the new one.
            if let Some(up) = self.idle.take() {
                up.quit().await;
            }
        }
        self.phase = Phase::Greeted(Helo { name: name.to_string(), esmtp });
        self.offered = if esmtp { self.offer() } else { Offer::default() };
        if esmtp {
            let (config, offered) = (self.config.clone(), self.offered);
            ehlo::write_reply(self.reply_buf(), &config.hostname, &offered);
        } else {
            let helo = format!("250 {}", self.config.hostname);
            self.reply(&helo);
        }
        Ok(())
    }

    /// What this client is offered now: the extensions that depend on the backend
    /// follow the one this session is connected to, or else the one it would reach.
    pub(super) fn offer(&mut self) -> Offer {
        let offer = Offer {
            max_size: self.config.limits.max_message_size,
            starttls: self.listener.tls == ListenerTls::StartTls && !self.stream.is_tls() && self.tls_available(),
            auth: self.auth_offered(),
            held: !self.listener.milters.is_empty(),
            ..Offer::default()
        };
        match self.connection() {
            Some(up) => offer.following(up.capabilities()),
            None => {
                let states = self.backend_states();
                crate::backend::registry::with_expected_capabilities(&states, |caps| offer.following(caps))
            }
        }
    }
}
